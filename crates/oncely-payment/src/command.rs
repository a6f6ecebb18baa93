//! The payment command: the seed's `PaymentCommand`, checked once, at construction.

use std::fmt;

use oncely::{IdempotencyKey, InvalidName};
use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Why a payment request was refused. Nothing is stored for a refused request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPayment {
    /// The amount is zero or negative.
    #[error("amount must be greater than zero, not {0}")]
    AmountNotPositive(Decimal),
    /// The amount has more decimal places than money has.
    #[error("amount {0} has more than 2 decimal places")]
    AmountTooPrecise(Decimal),
    /// The amount is beyond what the ledger keeps.
    #[error("amount {0} is larger than 999999999999.99")]
    AmountTooLarge(Decimal),
    /// An id that must be positive is not.
    #[error("{field} must be a positive integer, not {value}")]
    IdNotPositive {
        /// `orderId` or `customerId`.
        field: &'static str,
        /// What was given.
        value: i64,
    },
    /// The payment method is empty, too long, or has characters outside `A-Z a-z 0-9 _ -`.
    #[error("paymentMethod must be 1 to 50 of A-Z a-z 0-9 _ -, not {0:?}")]
    PaymentMethod(String),
    /// The currency is not three upper-case letters (ISO 4217).
    #[error("currency must be an ISO 4217 code of three upper-case letters, not {0:?}")]
    Currency(String),
}

/// An ISO 4217 currency code: three upper-case ASCII letters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

impl Currency {
    /// Checks and wraps a code.
    pub fn new(code: impl Into<String>) -> Result<Self, InvalidPayment> {
        let code = code.into();
        if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Self(code))
        } else {
            Err(InvalidPayment::Currency(code))
        }
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Currency {
    fn default() -> Self {
        Self("USD".into())
    }
}

impl TryFrom<String> for Currency {
    type Error = InvalidPayment;
    fn try_from(code: String) -> Result<Self, Self::Error> {
        Self::new(code)
    }
}

impl From<Currency> for String {
    fn from(currency: Currency) -> Self {
        currency.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The largest amount: what `DECIMAL(14, 2)` holds.
fn amount_max() -> Decimal {
    Decimal::new(99_999_999_999_999, 2)
}

/// A request to charge a customer, as it comes in (JSON), before any check. Unknown fields
/// are refused, so a typo never passes silently. Its JSON Schema (`/openapi.json`) is
/// derived from it; the checks are [`PaymentCommand`]'s `TryFrom`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PaymentRequest {
    /// The order being paid.
    #[schemars(range(min = 1, max = 9_223_372_036_854_775_807_i64))]
    pub order_id: i64,
    /// How much: an exact decimal, as a JSON number or string, above zero, at most two
    /// decimal places.
    #[schemars(schema_with = "amount_schema")]
    pub amount: Decimal,
    /// How (`CARD`, `BANK_TRANSFER`, …).
    #[schemars(regex(pattern = "^[A-Za-z0-9_-]{1,50}$"))]
    pub payment_method: String,
    /// Who pays.
    #[schemars(range(min = 1, max = 9_223_372_036_854_775_807_i64))]
    pub customer_id: i64,
    /// ISO 4217; `USD` when absent.
    #[serde(default)]
    #[schemars(regex(pattern = "^[A-Z]{3}$"))]
    pub currency: Option<String>,
}

/// Above zero, at most 12 digits before the point and 2 after, no sign, no exponent:
/// `25`, `25.5`, `0.01`.
const AMOUNT_PATTERN: &str = r"^(0\.(0[1-9]|[1-9][0-9]?)|[1-9][0-9]{0,11}(\.[0-9]{1,2})?)$";

fn amount_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "exact decimal > 0 with at most 2 decimal places, as a string or a JSON number written without sign or exponent",
        "anyOf": [
            { "type": "string", "pattern": AMOUNT_PATTERN },
            { "type": "number", "exclusiveMinimum": 0, "maximum": 999_999_999_999.99_f64, "multipleOf": 0.01 }
        ],
        "examples": ["25.00"]
    })
}

/// Checks how `amount` is written where its JSON value cannot tell: a number written with
/// an exponent (`1e3`) is refused, as the schema's description says.
pub fn check_amount_text(body: &[u8]) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Raw<'a> {
        #[serde(borrow)]
        amount: Option<&'a serde_json::value::RawValue>,
    }
    let Ok(Raw {
        amount: Some(amount),
    }) = serde_json::from_slice::<Raw<'_>>(body)
    else {
        return Ok(());
    };
    let text = amount.get();
    if text.starts_with('"') || text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        Ok(())
    } else {
        Err(format!(
            "/amount: {text} is written with an exponent or sign; write it as 1000.00 or \"1000.00\""
        ))
    }
}

/// A checked payment command: every value in it is valid. Stored as its request and read
/// back through the same checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PaymentRequest", into = "PaymentRequest")]
pub struct PaymentCommand {
    order_id: i64,
    amount: Decimal,
    payment_method: String,
    customer_id: i64,
    currency: Currency,
}

impl TryFrom<PaymentRequest> for PaymentCommand {
    type Error = InvalidPayment;

    fn try_from(request: PaymentRequest) -> Result<Self, Self::Error> {
        let currency = match request.currency {
            Some(code) => Currency::new(code)?,
            None => Currency::default(),
        };
        Self::new(
            request.order_id,
            request.amount,
            request.payment_method,
            request.customer_id,
            currency,
        )
    }
}

impl From<PaymentCommand> for PaymentRequest {
    fn from(command: PaymentCommand) -> Self {
        Self {
            order_id: command.order_id,
            amount: command.amount,
            payment_method: command.payment_method,
            customer_id: command.customer_id,
            currency: Some(command.currency.0),
        }
    }
}

impl PaymentCommand {
    /// A command from its fields, checked as the seed's compact constructor does.
    pub fn new(
        order_id: i64,
        amount: Decimal,
        payment_method: impl Into<String>,
        customer_id: i64,
        currency: Currency,
    ) -> Result<Self, InvalidPayment> {
        let payment_method = payment_method.into();
        if amount <= Decimal::ZERO {
            return Err(InvalidPayment::AmountNotPositive(amount));
        }
        if amount.normalize().scale() > 2 {
            return Err(InvalidPayment::AmountTooPrecise(amount));
        }
        if amount > amount_max() {
            return Err(InvalidPayment::AmountTooLarge(amount));
        }
        for (field, value) in [("orderId", order_id), ("customerId", customer_id)] {
            if value <= 0 {
                return Err(InvalidPayment::IdNotPositive { field, value });
            }
        }
        let method_ok = (1..=50).contains(&payment_method.len())
            && payment_method
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !method_ok {
            return Err(InvalidPayment::PaymentMethod(payment_method));
        }
        // Stored with two decimals, so "10", "10.0" and "10.00" are one request.
        let mut amount = amount.normalize();
        amount.rescale(2);
        Ok(Self {
            order_id,
            amount,
            payment_method,
            customer_id,
            currency,
        })
    }

    /// The order being paid.
    pub fn order_id(&self) -> i64 {
        self.order_id
    }

    /// The amount, with two decimal places.
    pub fn amount(&self) -> Decimal {
        self.amount
    }

    /// The payment method.
    pub fn payment_method(&self) -> &str {
        &self.payment_method
    }

    /// The customer.
    pub fn customer_id(&self) -> i64 {
        self.customer_id
    }

    /// The currency.
    pub fn currency(&self) -> &Currency {
        &self.currency
    }

    /// The seed's business key, `PAY-{customerId}-{orderId}-{paymentMethod}`: the
    /// idempotency key when the caller gives none.
    pub fn business_key(&self) -> Result<IdempotencyKey, InvalidName> {
        IdempotencyKey::new(format!(
            "PAY-{}-{}-{}",
            self.customer_id, self.order_id, self.payment_method
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn request(json: &str) -> Result<PaymentCommand, String> {
        let request: PaymentRequest = serde_json::from_str(json).map_err(|e| e.to_string())?;
        PaymentCommand::try_from(request).map_err(|e| e.to_string())
    }

    #[test]
    fn amounts_are_exact_from_numbers_and_strings() {
        let from_number =
            request(r#"{"orderId":1,"amount":10.1,"paymentMethod":"CARD","customerId":2}"#)
                .unwrap();
        let from_string =
            request(r#"{"orderId":1,"amount":"10.10","paymentMethod":"CARD","customerId":2}"#)
                .unwrap();
        assert_eq!(from_number, from_string);
        assert_eq!(from_number.amount(), Decimal::from_str("10.10").unwrap());
        assert_eq!(from_number.amount().to_string(), "10.10");
        assert_eq!(from_number.currency().as_str(), "USD");
        let json = serde_json::to_value(&from_number).unwrap();
        assert_eq!(json["amount"], "10.10", "stored as a string, never a float");
        assert_eq!(json["currency"], "USD");
    }

    #[test]
    fn a_stored_command_is_read_back_through_the_same_checks() {
        let good =
            request(r#"{"orderId":1,"amount":"1.50","paymentMethod":"CARD","customerId":2}"#)
                .unwrap();
        let stored = serde_json::to_value(&good).unwrap();
        assert_eq!(
            serde_json::from_value::<PaymentCommand>(stored).unwrap(),
            good
        );
        // A row edited by hand into an invalid command is refused on the way back.
        let edited =
            serde_json::json!({"orderId":1,"amount":"-1","paymentMethod":"CARD","customerId":2});
        let error = serde_json::from_value::<PaymentCommand>(edited).unwrap_err();
        assert!(error.to_string().contains("greater than zero"), "{error}");
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let cases = [
            (
                r#"{"orderId":1,"amount":0,"paymentMethod":"CARD","customerId":2}"#,
                "greater than zero",
            ),
            (
                r#"{"orderId":1,"amount":-5,"paymentMethod":"CARD","customerId":2}"#,
                "greater than zero",
            ),
            (
                r#"{"orderId":1,"amount":"1.001","paymentMethod":"CARD","customerId":2}"#,
                "decimal places",
            ),
            (
                r#"{"orderId":1,"amount":"1e15","paymentMethod":"CARD","customerId":2}"#,
                "",
            ),
            (
                r#"{"orderId":0,"amount":1,"paymentMethod":"CARD","customerId":2}"#,
                "orderId",
            ),
            (
                r#"{"orderId":1,"amount":1,"paymentMethod":"","customerId":2}"#,
                "paymentMethod",
            ),
            (
                r#"{"orderId":1,"amount":1,"paymentMethod":"CA RD","customerId":2}"#,
                "paymentMethod",
            ),
            (
                r#"{"orderId":1,"amount":1,"paymentMethod":"CARD","customerId":2,"currency":"usd"}"#,
                "ISO 4217",
            ),
            (
                r#"{"orderId":1,"amount":1,"paymentMethod":"CARD","customerId":2,"tip":1}"#,
                "unknown field",
            ),
            (
                r#"{"orderId":1,"amount":1,"paymentMethod":"CARD"}"#,
                "missing field",
            ),
        ];
        for (json, reason) in cases {
            let error = request(json).expect_err(json);
            assert!(error.contains(reason), "{json}: {error}");
        }
    }

    #[test]
    fn business_key_is_the_seeds() {
        let command =
            request(r#"{"orderId":1001,"amount":1,"paymentMethod":"CARD","customerId":7}"#)
                .unwrap();
        assert_eq!(command.business_key().unwrap().as_str(), "PAY-7-1001-CARD");
    }
}

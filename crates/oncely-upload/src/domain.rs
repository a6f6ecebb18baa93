//! Uploads: an object written once under its name, never overwritten. `POST /v1/uploads`.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use oncely::{Attempt, Orchestrator, Outcome, RetryPolicy};
use oncely_http::HttpDomain;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::storage::{Found, Storage, StorageError, hex_sha256};

/// The largest object, decoded: 5 MiB. (Its base64 form is a third larger; the route takes
/// bodies up to 8 MiB.)
pub const CONTENT_MAX_BYTES: usize = 5 * 1024 * 1024;

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UploadRequest {
    /// The bucket, named as S3 names them: 3 to 63 of `a-z 0-9 . -`, starting and ending
    /// with a letter or digit.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"))]
    pub bucket: String,
    /// The object's name in the bucket: 1 to 1,024 bytes of `/`-separated parts, none
    /// empty, `.` or `..`.
    #[schemars(length(min = 1, max = 1024))]
    pub object_key: String,
    /// The media type stored with the object (`image/png`).
    #[schemars(regex(pattern = r"^[!-~]+/[!-~]+$"), length(max = 255))]
    pub content_type: String,
    /// The content, base64 (standard alphabet, padded); at most 5 MiB decoded.
    pub content_base64: String,
    /// The SHA-256 of the decoded content, lowercase hex: checked on accept.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: String,
}

/// A checked upload: the request whose content decodes, fits and matches its checksum.
/// Stored as its request, read back through the same checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "UploadRequest", into = "UploadRequest")]
pub struct Upload {
    request: UploadRequest,
    content: Bytes,
}

impl Upload {
    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.request.bucket
    }

    /// The object's name.
    pub fn object_key(&self) -> &str {
        &self.request.object_key
    }

    /// The SHA-256 of the content, lowercase hex.
    pub fn sha256(&self) -> &str {
        &self.request.sha256
    }

    /// The decoded content.
    pub fn content(&self) -> &Bytes {
        &self.content
    }
}

impl TryFrom<UploadRequest> for Upload {
    type Error = String;

    fn try_from(request: UploadRequest) -> Result<Self, String> {
        check_bucket(&request.bucket)?;
        check_object_key(&request.object_key)?;
        let content_type = &request.content_type;
        let media_type = content_type.len() <= 255
            && content_type.split_once('/').is_some_and(|(kind, sub)| {
                !kind.is_empty() && !sub.is_empty() && !sub.contains('/')
            })
            && content_type.bytes().all(|b| b.is_ascii_graphic());
        if !media_type {
            return Err(format!(
                "contentType {content_type:?} is not a media type such as image/png"
            ));
        }
        // At most this many base64 characters decode to CONTENT_MAX_BYTES.
        if request.content_base64.len() > CONTENT_MAX_BYTES.div_ceil(3) * 4 {
            return Err(format!(
                "the content is larger than {CONTENT_MAX_BYTES} bytes"
            ));
        }
        let content = base64::engine::general_purpose::STANDARD
            .decode(&request.content_base64)
            .map_err(|error| format!("contentBase64 is not base64: {error}"))?;
        if content.len() > CONTENT_MAX_BYTES {
            return Err(format!(
                "the content is larger than {CONTENT_MAX_BYTES} bytes"
            ));
        }
        let sha256 = &request.sha256;
        let well_formed = sha256.len() == 64
            && sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !well_formed {
            return Err("sha256 must be 64 lowercase hex digits".to_owned());
        }
        let actual = hex_sha256(&content);
        if &actual != sha256 {
            return Err(format!(
                "sha256 does not match the content, whose SHA-256 is {actual}"
            ));
        }
        Ok(Self {
            request,
            content: Bytes::from(content),
        })
    }
}

impl From<Upload> for UploadRequest {
    fn from(upload: Upload) -> Self {
        upload.request
    }
}

fn check_bucket(bucket: &str) -> Result<(), String> {
    let shape = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !bucket.contains("..");
    if shape {
        Ok(())
    } else {
        Err(format!(
            "bucket {bucket:?} is not a bucket name: 3 to 63 of a-z 0-9 . -, starting and ending with a letter or digit"
        ))
    }
}

fn check_object_key(key: &str) -> Result<(), String> {
    let parts_ok = key
        .split('/')
        .all(|part| !part.is_empty() && part != "." && part != "..");
    let chars_ok = !key.chars().any(char::is_control);
    let canonical = object_store::path::Path::parse(key).is_ok_and(|path| path.as_ref() == key);
    if !key.is_empty() && key.len() <= 1024 && parts_ok && chars_ok && canonical {
        Ok(())
    } else {
        Err(format!(
            "objectKey {key:?} is not an object name: 1 to 1024 bytes of /-separated parts, none empty, . or .., no control characters"
        ))
    }
}

/// Writes uploads to a [`Storage`]: a conditional create per attempt, and a look at the
/// name before writing again after an attempt whose outcome is unknown.
#[derive(Debug, Clone)]
pub struct Uploader(pub Storage);

impl Uploader {
    /// What `found` at the upload's name means.
    fn settle(upload: &Upload, found: Found, how: &str) -> Outcome {
        match found {
            Found::Absent => Outcome::unknown(format!(
                "{how}, yet nothing is at {}/{}",
                upload.bucket(),
                upload.object_key()
            )),
            Found::Same => stored(upload).with_data("alreadyThere", true),
            Found::Different { sha256 } => Outcome::fail(format!(
                "another object (SHA-256 {sha256}) is at {}/{}; it is not overwritten",
                upload.bucket(),
                upload.object_key()
            ))
            .with_error_code("object-exists"),
        }
    }
}

/// The `Ok` outcome of an upload that is in the store.
fn stored(upload: &Upload) -> Outcome {
    Outcome::ok()
        .with_data("bucket", upload.bucket())
        .with_data("objectKey", upload.object_key())
        .with_data("sha256", upload.sha256())
        .with_data("size", upload.content().len())
}

impl Orchestrator for Uploader {
    type Command = Upload;
    const DOMAIN: &'static str = "UPLOAD";
    const EVENT_TYPE: &'static str = "UPLOAD_REQUESTED";

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(60)).attempts(8)
    }

    async fn execute(&self, upload: Upload, attempt: Attempt) -> Outcome {
        tracing::debug!(key = %attempt.idempotency_key(), attempt = attempt.number, bucket = upload.bucket(), object = upload.object_key(), "writing the object");
        let created = self
            .0
            .create(
                upload.bucket(),
                upload.object_key(),
                upload.content().clone(),
                &upload.request.content_type,
                upload.sha256(),
            )
            .await;
        match created {
            Ok(()) => stored(&upload),
            // Something is there: this upload's earlier attempt, or another writer's object.
            Err(StorageError::Store(object_store::Error::AlreadyExists { .. })) => {
                match self
                    .0
                    .find(upload.bucket(), upload.object_key(), upload.sha256())
                    .await
                {
                    Ok(found) => Self::settle(&upload, found, "the store said the name is taken"),
                    Err(error) => Outcome::unknown(format!(
                        "the name is taken and the object cannot be read: {error}"
                    )),
                }
            }
            Err(StorageError::Store(object_store::Error::NotFound { .. })) => {
                Outcome::fail(format!("bucket {} does not exist", upload.bucket()))
                    .with_error_code("no-such-bucket")
            }
            // A failed request may still have written the object: the next attempt looks
            // before it writes.
            Err(error) => Outcome::unknown(format!("the object store failed: {error}")),
        }
    }

    async fn reconcile(&self, upload: &Upload, attempt: &Attempt) -> Option<Outcome> {
        tracing::debug!(key = %attempt.idempotency_key(), attempt = attempt.number, "looking for the object before writing again");
        match self
            .0
            .find(upload.bucket(), upload.object_key(), upload.sha256())
            .await
        {
            Ok(Found::Absent) => None,
            Ok(found) => Some(Self::settle(upload, found, "found")),
            Err(error) => Some(Outcome::retry(format!(
                "the object store could not be asked about {}/{}: {error}",
                upload.bucket(),
                upload.object_key()
            ))),
        }
    }
}

impl HttpDomain for Uploader {
    const RESOURCE: &'static str = "uploads";
    const BODY_LIMIT_BYTES: usize = 8 * 1024 * 1024;
    type Request = UploadRequest;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn request(content: &[u8]) -> UploadRequest {
        UploadRequest {
            bucket: "photos".into(),
            object_key: "2026/11/cat.txt".into(),
            content_type: "text/plain".into(),
            content_base64: base64::engine::general_purpose::STANDARD.encode(content),
            sha256: hex_sha256(content),
        }
    }

    #[test]
    fn a_checked_upload_round_trips_through_its_request() {
        let upload = Upload::try_from(request(b"meow")).unwrap();
        assert_eq!(upload.content().as_ref(), b"meow");
        let json = serde_json::to_value(&upload).unwrap();
        assert_eq!(json["objectKey"], "2026/11/cat.txt");
        assert_eq!(serde_json::from_value::<Upload>(json).unwrap(), upload);
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        type Change = fn(&mut UploadRequest);
        let cases: [(&str, Change); 9] = [
            ("sha256 does not match", |r| r.sha256 = hex_sha256(b"other")),
            ("64 lowercase hex", |r| r.sha256 = r.sha256.to_uppercase()),
            ("not base64", |r| r.content_base64 = "***".into()),
            ("not a bucket name", |r| r.bucket = "Photos".into()),
            ("not a bucket name", |r| r.bucket = "a..b".into()),
            ("not an object name", |r| r.object_key = "a//b".into()),
            ("not an object name", |r| {
                r.object_key = "../etc/passwd".into()
            }),
            ("not an object name", |r| r.object_key = "/abs".into()),
            ("not a media type", |r| r.content_type = "text".into()),
        ];
        for (expected, change) in cases {
            let mut bad = request(b"meow");
            change(&mut bad);
            let error = Upload::try_from(bad).unwrap_err();
            assert!(error.contains(expected), "{expected}: {error}");
        }
    }

    #[test]
    fn content_over_five_mebibytes_is_refused_and_five_are_taken() {
        let five = vec![7u8; CONTENT_MAX_BYTES];
        assert!(Upload::try_from(request(&five)).is_ok());
        let over = vec![7u8; CONTENT_MAX_BYTES + 1];
        let error = Upload::try_from(request(&over)).unwrap_err();
        assert!(error.contains("larger than"), "{error}");
    }
}

//! Reconciling uploads with the store they went to: every `COMPLETED` upload's object is
//! there with its checksum, and no `FAILED` upload's content is.

use std::collections::BTreeMap;

use oncely::{Operation, OperationState};
use serde::Serialize;

use crate::domain::Upload;
use crate::storage::{Found, Storage};

/// What is wrong with one upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DiscrepancyKind {
    /// `COMPLETED`, and no object is at its name.
    MissingObject,
    /// `COMPLETED`, and another object is at its name: it was overwritten.
    WrongObject,
    /// `FAILED`, and its content is at its name.
    FailedButStored,
    /// Its stored command cannot be read, or the store cannot be asked.
    Unreadable,
}

/// One upload that does not agree with the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Discrepancy {
    /// What.
    pub kind: DiscrepancyKind,
    /// The operation's key.
    pub key: String,
    /// For people.
    pub detail: String,
}

/// The audit of uploads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadReport {
    /// Operations by state.
    pub operations: BTreeMap<String, usize>,
    /// Objects looked at.
    pub objects_checked: usize,
    /// Keys of operations not yet terminal.
    pub non_terminal: Vec<String>,
    /// What disagrees.
    pub discrepancies: Vec<Discrepancy>,
}

impl UploadReport {
    /// Whether every upload agrees with the store.
    pub fn is_clean(&self) -> bool {
        self.discrepancies.is_empty()
    }
}

/// Looks at the object of every `COMPLETED` and `FAILED` upload in `operations`.
pub async fn reconcile(operations: &[Operation], storage: &Storage) -> UploadReport {
    let mut report = UploadReport::default();
    for operation in operations {
        *report
            .operations
            .entry(operation.state.as_str().to_owned())
            .or_default() += 1;
        let key = operation.scope.key.as_str().to_owned();
        if !operation.state.is_terminal() {
            report.non_terminal.push(key);
            continue;
        }
        if !matches!(
            operation.state,
            OperationState::Completed | OperationState::Failed | OperationState::Cancelled
        ) {
            continue;
        }
        let mut found = |kind, detail: String| {
            report.discrepancies.push(Discrepancy {
                kind,
                key: key.clone(),
                detail,
            });
        };
        let upload = match serde_json::from_value::<Upload>(operation.payload.clone()) {
            Ok(upload) => upload,
            Err(error) => {
                found(
                    DiscrepancyKind::Unreadable,
                    format!("the stored upload cannot be read: {error}"),
                );
                continue;
            }
        };
        let name = format!("{}/{}", upload.bucket(), upload.object_key());
        let at_name = storage
            .find(upload.bucket(), upload.object_key(), upload.sha256())
            .await;
        report.objects_checked += 1;
        match (operation.state, at_name) {
            (_, Err(error)) => found(
                DiscrepancyKind::Unreadable,
                format!("{name} cannot be read: {error}"),
            ),
            (OperationState::Completed, Ok(Found::Absent)) => found(
                DiscrepancyKind::MissingObject,
                format!("COMPLETED, and nothing is at {name}"),
            ),
            (OperationState::Completed, Ok(Found::Different { sha256 })) => found(
                DiscrepancyKind::WrongObject,
                format!("COMPLETED, and {name} holds another object (SHA-256 {sha256})"),
            ),
            (OperationState::Failed | OperationState::Cancelled, Ok(Found::Same)) => found(
                DiscrepancyKind::FailedButStored,
                format!("{}, and its content is at {name}", operation.state),
            ),
            _ => {}
        }
    }
    report
}

//! The file upload domain of oncely: an object written once to S3-compatible storage (or
//! a local directory), never overwritten, served at
//! `POST /v1/uploads {bucket, objectKey, contentType, contentBase64, sha256}`.
//!
//! S3 takes no idempotency key, so a blind retry after a lost answer could overwrite a
//! newer object. Every write is a conditional create (`If-None-Match: *`), and an attempt
//! whose outcome is unknown is settled by asking the store first
//! ([`oncely::Orchestrator::reconcile`]): the object with the same checksum is the upload,
//! done; no object, write it; another object, `FAILED` with `object-exists`.
//!
//! - [`domain`]: the request, the checked command and the orchestrator, in one file.
//! - [`storage`]: where objects go: an S3 endpoint or a local directory.
//! - [`audit`]: reconciling uploads with the store they went to.

#![forbid(unsafe_code)]

pub mod audit;
pub mod domain;
pub mod storage;

pub use domain::{CONTENT_MAX_BYTES, Upload, UploadRequest, Uploader};
pub use storage::{Found, Storage, StorageError};

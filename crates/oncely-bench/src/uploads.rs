//! `uploads-1k` / `uploads-1m`: objects written to an S3-compatible server (moto, started
//! once by the harness) through oncely's uploads domain, beside the same conditional
//! create made directly with the same object store client: what oncely adds to an upload.
//!
//! oncely's side includes what its accept does with every upload — the checksum check of
//! the decoded content — and the content's round trip through the database (the payload
//! holds it until the operation is terminal). The direct side is one `PUT` with
//! `If-None-Match: *` per object. Each run writes to a bucket of its own, and every object
//! is looked up afterwards: one missing or different is a lost upload.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use oncely_upload::storage::hex_sha256;
use oncely_upload::{Found, Storage, Upload, UploadRequest, Uploader};
use serde::{Deserialize, Serialize};

use crate::BenchError;
use crate::drive::closed_loop;
use crate::result::WorkloadResult;
use crate::scratch::Scratch;
use crate::workload::{Load, backend, completed, scratch_done, start_engine, stop_engine};

/// One uploads run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadSpec {
    /// The load (`db` is `-` for the direct run; the gateway latency is unused).
    pub load: Load,
    /// Bytes per object.
    pub size: usize,
    /// The S3-compatible endpoint; its buckets are created unsigned (moto takes any caller).
    pub endpoint: String,
    /// The object store called directly, without oncely.
    pub direct: bool,
}

/// The system names in reports.
pub const DIRECT: &str = "direct call";

/// The sizes measured, with their workload names.
pub const SIZES: [(&str, usize); 2] = [("uploads-1k", 1024), ("uploads-1m", 1024 * 1024)];

/// How long one request to the object store may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `spec` here.
pub async fn run(spec: &UploadSpec) -> Result<WorkloadResult, BenchError> {
    let load = &spec.load;
    let bucket = format!("oncely-bench-{}", std::process::id());
    create_bucket(&spec.endpoint, &bucket).await?;
    let storage = Storage::s3_with_keys(
        &spec.endpoint,
        "us-east-1",
        REQUEST_TIMEOUT,
        "bench",
        "bench",
    )
    .map_err(|e| BenchError::Setup(e.to_string()))?;
    let content = content(spec.size);
    let request = Arc::new(UploadRequest {
        bucket: bucket.clone(),
        object_key: String::new(),
        content_type: "application/octet-stream".to_owned(),
        content_base64: base64::engine::general_purpose::STANDARD.encode(&content),
        sha256: hex_sha256(&content),
    });
    let (system, backend_name, driven) = if spec.direct {
        let (storage, request) = (storage.clone(), request.clone());
        let content = bytes::Bytes::from(content);
        let driven = closed_loop(load.n, load.clients, move |i| {
            let (storage, request, content) = (storage.clone(), request.clone(), content.clone());
            async move {
                storage
                    .create(
                        &request.bucket,
                        &object_key(i),
                        content,
                        &request.content_type,
                        &request.sha256,
                    )
                    .await
                    .map_err(|e| format!("upload {i}: {e}"))
            }
        })
        .await;
        (DIRECT, "-", driven)
    } else {
        let scratch = Scratch::create(&load.db).await?;
        let (engine, finishes) = start_engine(load, &scratch, Uploader(storage.clone())).await?;
        let driver = engine.clone();
        let request = request.clone();
        let driven = closed_loop(load.n, load.clients, move |i| {
            let (engine, finishes, request) = (driver.clone(), finishes.clone(), request.clone());
            async move {
                // What a caller hands over: the request, checked as the accept checks it.
                let upload = Upload::try_from(UploadRequest {
                    object_key: object_key(i),
                    ..UploadRequest::clone(&request)
                })?;
                let key = oncely::IdempotencyKey::new(format!("upload-{i}"))
                    .map_err(|e| e.to_string())?;
                let submitted = engine
                    .submit(key, upload)
                    .await
                    .map_err(|e| e.to_string())?;
                completed(&finishes, submitted.operation.id, &format!("upload {i}")).await
            }
        })
        .await;
        stop_engine(engine, Duration::from_secs(5)).await;
        scratch_done(scratch).await;
        ("oncely", backend(&load.db), driven)
    };
    let mut result =
        WorkloadResult::from_driven(&load.workload, system, backend_name, load.n, &driven);
    result.lost = missing(&storage, &request, load.n).await?;
    let result = result
        .with("object size", format!("{} B", spec.size))
        .with("clients", load.clients);
    Ok(if spec.direct {
        result
    } else {
        result
            .with("workers", load.workers)
            .with("batch", load.batch)
    })
}

/// `size` bytes of content (the same for every object: only the names differ).
fn content(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

fn object_key(i: u64) -> String {
    format!("objects/{i:08}")
}

/// Objects `0..n` that are not in the bucket with the content's checksum.
async fn missing(storage: &Storage, request: &UploadRequest, n: u64) -> Result<u64, BenchError> {
    let mut missing = 0;
    for i in 0..n {
        let found = storage
            .find(&request.bucket, &object_key(i), &request.sha256)
            .await
            .map_err(|e| BenchError::Child(format!("looking up object {i}: {e}")))?;
        if found != Found::Same {
            missing += 1;
        }
    }
    Ok(missing)
}

async fn create_bucket(endpoint: &str, bucket: &str) -> Result<(), BenchError> {
    let url = format!("{}/{bucket}", endpoint.trim_end_matches('/'));
    let answer = reqwest::Client::new()
        .put(&url)
        .send()
        .await
        .map_err(|e| BenchError::Setup(format!("creating bucket {url}: {e}")))?;
    if answer.status().is_success() {
        Ok(())
    } else {
        Err(BenchError::Setup(format!(
            "creating bucket {url} answered {}",
            answer.status()
        )))
    }
}

/// Forgets every bucket and object of the moto server at `endpoint`, so that runs do not
/// pile objects up in its memory.
pub async fn reset_moto(endpoint: &str) -> Result<(), String> {
    let url = format!("{}/moto-api/reset", endpoint.trim_end_matches('/'));
    let answer = reqwest::Client::new()
        .post(&url)
        .send()
        .await
        .map_err(|e| format!("resetting moto at {url}: {e}"))?;
    if answer.status().is_success() {
        Ok(())
    } else {
        Err(format!(
            "resetting moto at {url} answered {}",
            answer.status()
        ))
    }
}

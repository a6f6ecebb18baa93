//! Where uploads go: buckets on an S3-compatible endpoint, or directories under a local
//! root, behind the `object_store` crate. Two operations only: a conditional create, and a
//! look at what is already at a name.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, ClientOptions, GetOptions, ObjectStore, PutMode,
    PutOptions, PutPayload, RetryConfig,
};
use sha2::{Digest, Sha256};

/// The user metadata an object carries its SHA-256 in (`x-amz-meta-sha256` on S3), so a
/// look at the object's headers tells whether it is the upload.
const CHECKSUM_METADATA: &str = "sha256";

/// Why storage could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The S3 endpoint is not an http(s) URL.
    #[error("invalid S3 endpoint {0:?}: expected http(s)://HOST[:PORT]")]
    Endpoint(String),
    /// The local directory could not be made.
    #[error("cannot use {path} for uploads: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The object's name is not one the store takes.
    #[error(transparent)]
    Name(#[from] object_store::path::Error),
    /// The object store refused or failed.
    #[error(transparent)]
    Store(#[from] object_store::Error),
}

/// What is at an object's name, compared with an upload's checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing.
    Absent,
    /// An object with the same SHA-256: the upload.
    Same,
    /// Another object.
    Different {
        /// Its SHA-256.
        sha256: String,
    },
}

/// Buckets on an S3 endpoint, or directories under a local root. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Storage(Arc<Kind>);

/// An access key: its secret never printed.
struct Keys {
    id: String,
    secret: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug)]
enum Kind {
    S3 {
        endpoint: String,
        region: String,
        timeout: Duration,
        keys: Option<Keys>,
        buckets: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    },
    Local {
        root: PathBuf,
    },
}

impl Storage {
    /// Buckets on the S3-compatible endpoint `endpoint` (path-style requests), signed with
    /// the usual `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`
    /// variables. Each request gives up after `timeout`; the store's own retries are off,
    /// so that every attempt is one request and in the write-ahead log.
    pub fn s3(endpoint: &str, region: &str, timeout: Duration) -> Result<Self, StorageError> {
        Self::s3_with(endpoint, region, timeout, None)
    }

    /// [`Storage::s3`] signing with this access key id and secret instead of the
    /// environment's.
    pub fn s3_with_keys(
        endpoint: &str,
        region: &str,
        timeout: Duration,
        access_key_id: &str,
        secret_access_key: &str,
    ) -> Result<Self, StorageError> {
        let keys = Keys {
            id: access_key_id.to_owned(),
            secret: secret_access_key.to_owned(),
        };
        Self::s3_with(endpoint, region, timeout, Some(keys))
    }

    fn s3_with(
        endpoint: &str,
        region: &str,
        timeout: Duration,
        keys: Option<Keys>,
    ) -> Result<Self, StorageError> {
        let endpoint = endpoint.trim_end_matches('/');
        let valid = (endpoint.starts_with("http://") || endpoint.starts_with("https://"))
            && url_has_host(endpoint);
        if !valid {
            return Err(StorageError::Endpoint(endpoint.to_owned()));
        }
        Ok(Self(Arc::new(Kind::S3 {
            endpoint: endpoint.to_owned(),
            region: region.to_owned(),
            timeout,
            keys,
            buckets: Mutex::new(HashMap::new()),
        })))
    }

    /// Buckets as directories under `root` (made if missing).
    pub fn local(root: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|source| StorageError::Directory {
            path: root.clone(),
            source,
        })?;
        Ok(Self(Arc::new(Kind::Local { root })))
    }

    /// Where objects go, for logs.
    pub fn describe(&self) -> String {
        match &*self.0 {
            Kind::S3 {
                endpoint, region, ..
            } => format!("s3 {endpoint} (region {region})"),
            Kind::Local { root } => format!("local directory {}", root.display()),
        }
    }

    fn bucket(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, StorageError> {
        match &*self.0 {
            Kind::S3 {
                endpoint,
                region,
                timeout,
                keys,
                buckets,
            } => {
                let mut buckets = buckets.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(store) = buckets.get(bucket) {
                    return Ok(store.clone());
                }
                let options = ClientOptions::new()
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_timeout(*timeout)
                    .with_connect_timeout((*timeout).min(Duration::from_secs(3)));
                let retry = RetryConfig {
                    max_retries: 0,
                    ..RetryConfig::default()
                };
                let mut builder = AmazonS3Builder::from_env()
                    .with_endpoint(endpoint)
                    .with_region(region)
                    .with_bucket_name(bucket)
                    .with_virtual_hosted_style_request(false)
                    .with_client_options(options)
                    .with_retry(retry);
                if let Some(keys) = keys {
                    builder = builder
                        .with_access_key_id(&keys.id)
                        .with_secret_access_key(&keys.secret);
                }
                let store: Arc<dyn ObjectStore> = Arc::new(builder.build()?);
                buckets.insert(bucket.to_owned(), store.clone());
                Ok(store)
            }
            Kind::Local { root } => {
                let directory = root.join(bucket);
                std::fs::create_dir_all(&directory).map_err(|source| StorageError::Directory {
                    path: directory.clone(),
                    source,
                })?;
                Ok(Arc::new(LocalFileSystem::new_with_prefix(directory)?))
            }
        }
    }

    /// Writes `content` at `key` only if nothing is there (`If-None-Match: *`); an object
    /// already there is `object_store::Error::AlreadyExists`, never overwritten.
    pub async fn create(
        &self,
        bucket: &str,
        key: &str,
        content: Bytes,
        content_type: &str,
        sha256: &str,
    ) -> Result<(), StorageError> {
        let store = self.bucket(bucket)?;
        let mut attributes = Attributes::new();
        if matches!(&*self.0, Kind::S3 { .. }) {
            // The local file system keeps no attributes; there the checksum is the content's.
            attributes.insert(
                Attribute::Metadata(CHECKSUM_METADATA.into()),
                AttributeValue::from(sha256.to_owned()),
            );
            attributes.insert(
                Attribute::ContentType,
                AttributeValue::from(content_type.to_owned()),
            );
        }
        let options = PutOptions {
            mode: PutMode::Create,
            attributes,
            ..PutOptions::default()
        };
        let path = Path::parse(key)?;
        store
            .put_opts(&path, PutPayload::from_bytes(content), options)
            .await?;
        Ok(())
    }

    /// What is at `key`, compared with `sha256`: the checksum in the object's metadata
    /// when it has one (a `HEAD`), else the SHA-256 of its content (a `GET`).
    pub async fn find(&self, bucket: &str, key: &str, sha256: &str) -> Result<Found, StorageError> {
        let store = self.bucket(bucket)?;
        let path = Path::parse(key)?;
        if matches!(&*self.0, Kind::S3 { .. }) {
            let head = GetOptions {
                head: true,
                ..GetOptions::default()
            };
            match store.get_opts(&path, head).await {
                Err(object_store::Error::NotFound { .. }) => return Ok(Found::Absent),
                Err(error) => return Err(error.into()),
                Ok(result) => {
                    let said = result
                        .attributes
                        .get(&Attribute::Metadata(CHECKSUM_METADATA.into()))
                        .map(|value| value.as_ref().to_owned());
                    if let Some(said) = said {
                        return Ok(compare(said, sha256));
                    }
                }
            }
        }
        match self.read(bucket, key).await? {
            None => Ok(Found::Absent),
            Some(content) => Ok(compare(hex_sha256(&content), sha256)),
        }
    }

    /// The content at `key`, if any: for audits.
    pub async fn read(&self, bucket: &str, key: &str) -> Result<Option<Bytes>, StorageError> {
        let store = self.bucket(bucket)?;
        let path = Path::parse(key)?;
        match store.get(&path).await {
            Ok(result) => Ok(Some(result.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }
}

fn compare(found: String, sha256: &str) -> Found {
    if found.eq_ignore_ascii_case(sha256) {
        Found::Same
    } else {
        Found::Different { sha256: found }
    }
}

fn url_has_host(url: &str) -> bool {
    url.split_once("://")
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or_default())
        .is_some_and(|host| !host.is_empty())
}

/// The SHA-256 of `content`, lowercase hex.
pub fn hex_sha256(content: &[u8]) -> String {
    Sha256::digest(content)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn endpoints_must_be_http_urls_with_a_host() {
        for bad in [
            "",
            "localhost:9000",
            "ftp://x",
            "http://",
            "https:///bucket",
        ] {
            assert!(
                Storage::s3(bad, "us-east-1", Duration::from_secs(1)).is_err(),
                "{bad}"
            );
        }
        let storage = Storage::s3(
            "http://127.0.0.1:9000/",
            "eu-west-1",
            Duration::from_secs(1),
        );
        assert_eq!(
            storage.unwrap().describe(),
            "s3 http://127.0.0.1:9000 (region eu-west-1)"
        );
    }

    #[tokio::test]
    async fn a_local_create_never_overwrites_and_find_tells_same_from_different() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::local(dir.path()).unwrap();
        let sum = hex_sha256(b"one");
        assert_eq!(
            storage.find("b", "a/x.txt", &sum).await.unwrap(),
            Found::Absent
        );
        storage
            .create(
                "b",
                "a/x.txt",
                Bytes::from_static(b"one"),
                "text/plain",
                &sum,
            )
            .await
            .unwrap();
        let again = storage
            .create(
                "b",
                "a/x.txt",
                Bytes::from_static(b"two"),
                "text/plain",
                &hex_sha256(b"two"),
            )
            .await;
        assert!(
            matches!(
                again,
                Err(StorageError::Store(
                    object_store::Error::AlreadyExists { .. }
                ))
            ),
            "{again:?}"
        );
        assert_eq!(
            storage.find("b", "a/x.txt", &sum).await.unwrap(),
            Found::Same
        );
        assert_eq!(
            storage
                .find("b", "a/x.txt", &hex_sha256(b"two"))
                .await
                .unwrap(),
            Found::Different {
                sha256: sum.clone()
            }
        );
        assert_eq!(
            storage
                .read("b", "a/x.txt")
                .await
                .unwrap()
                .unwrap()
                .as_ref(),
            b"one"
        );
    }
}

//! AWS emulators for tests of `aws-lambda:push` pools: **LocalStack** (a `localstack-core`
//! process that `scripts/test` starts, or a container started here through `testcontainers` when
//! the `testcontainers` feature is on and a Docker engine answers) and **moto**, behind one
//! [`Emulator`] with the set-up calls a test needs (functions, queues, destination records, log
//! events, throttling), made with the AWS SDK for Rust exactly as a user's own code would.
//!
//! Usable from outside this repository: add `pushpool-testkit` as a dev-dependency (path or git)
//! and see docs/testing.md, "LocalStack-backed tests of your own pools".
//!
//! ```no_run
//! # async fn example() {
//! use pushpool_testkit::aws::{Emulator, LocalStack};
//! let Some(localstack) = LocalStack::from_env_or_start().await else { return }; // skipped locally
//! let aws: &Emulator = &localstack;
//! aws.create_function("etl", "def handler(event, context):\n    return {'ok': True}\n").await;
//! let queue_url = aws.create_queue("pushpool-results").await;
//! # let _ = queue_url;
//! # }
//! ```

use std::ops::Deref;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_lambda::primitives::Blob;
use serde_json::Value;

/// The region every emulator call uses.
pub const REGION: &str = "us-east-1";

/// Which emulator answers at an [`Emulator`]'s URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// moto's server (`moto_server`): runs no function code, echoes the payload.
    Moto,
    /// LocalStack: runs function code only with Docker.
    LocalStack,
}

/// An AWS emulator endpoint with SDK clients for the set-up calls of a test.
#[derive(Debug, Clone)]
pub struct Emulator {
    /// The endpoint, e.g. `http://127.0.0.1:4566`: a pool's `endpoint_url`.
    pub url: String,
    /// Which emulator it is.
    pub kind: Kind,
    /// How it was started, for the test output (`localstack-core process`, `testcontainers`, …).
    pub how: String,
    sdk: SdkConfig,
}

/// True under `CI=true`, where a missing emulator fails a test instead of skipping it.
pub fn under_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

impl Emulator {
    /// An emulator at `url`, with SDK clients using the dummy credentials `testing`/`testing`
    /// (LocalStack: account `000000000000`; moto: `123456789012`).
    pub async fn at(url: &str, kind: Kind, how: &str) -> Emulator {
        crate::env::aws_test_credentials();
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(url)
            .credentials_provider(aws_sdk_lambda::config::Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "pushpool-testkit",
            ))
            .load()
            .await;
        Emulator {
            url: url.trim_end_matches('/').to_string(),
            kind,
            how: how.to_string(),
            sdk,
        }
    }

    /// The moto server of `PUSHPOOL_TEST_MOTO_URL`, or `None` (skip) locally; under `CI=true` a
    /// missing server fails the test.
    pub async fn moto_from_env() -> Option<Emulator> {
        match std::env::var("PUSHPOOL_TEST_MOTO_URL") {
            Ok(url) if !url.is_empty() => {
                Some(Emulator::at(&url, Kind::Moto, "moto_server process").await)
            }
            _ => {
                assert!(!under_ci(), "PUSHPOOL_TEST_MOTO_URL is not set: under CI=true the moto suite must run (scripts/test sources scripts/test-emulators.sh)");
                eprintln!(
                    "SKIPPED: PUSHPOOL_TEST_MOTO_URL not set (source scripts/test-emulators.sh)"
                );
                None
            }
        }
    }

    /// The account id the emulator gives the dummy credentials.
    pub fn account(&self) -> &'static str {
        match self.kind {
            Kind::Moto => "123456789012",
            Kind::LocalStack => "000000000000",
        }
    }

    /// A Lambda client on the emulator.
    pub fn lambda(&self) -> aws_sdk_lambda::Client {
        aws_sdk_lambda::Client::new(&self.sdk)
    }

    /// An SQS client on the emulator.
    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk)
    }

    /// Creates (or finds) the IAM role `pushpool-test` and returns its ARN (IAM's query API over
    /// plain HTTP: neither emulator checks signatures, the header only names the service).
    pub async fn ensure_role(&self) -> String {
        let auth = format!("AWS4-HMAC-SHA256 Credential=testing/20240101/{REGION}/iam/aws4_request, SignedHeaders=host, Signature=0");
        let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
        let r = crate::http()
            .post(format!("{}/", self.url))
            .header("Authorization", auth)
            .form(&[
                ("Action", "CreateRole"),
                ("Version", "2010-05-08"),
                ("RoleName", "pushpool-test"),
                ("AssumeRolePolicyDocument", trust),
            ])
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(
            status.is_success() || text.contains("EntityAlreadyExists"),
            "CreateRole: {status} {text}"
        );
        format!("arn:aws:iam::{}:role/pushpool-test", self.account())
    }

    /// Creates a Python 3.12 function `name` whose `app.py` is `source` (handler
    /// `app.handler`, timeout 3 s). moto echoes payloads; LocalStack runs the code with Docker
    /// only (without it the function goes Pending, then Failed).
    pub async fn create_function(&self, name: &str, source: &str) -> String {
        let role = self.ensure_role().await;
        let out = self
            .lambda()
            .create_function()
            .function_name(name)
            .runtime(aws_sdk_lambda::types::Runtime::Python312)
            .handler("app.handler")
            .role(role)
            .timeout(3)
            .code(
                aws_sdk_lambda::types::FunctionCode::builder()
                    .zip_file(Blob::new(zip_one_file("app.py", source.as_bytes())))
                    .build(),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateFunction {name}: {e:?}"));
        out.function_arn().unwrap_or_default().to_string()
    }

    /// Waits until function `name` leaves `Pending` and returns its state (`Active`, `Failed`).
    pub async fn wait_function_settled(&self, name: &str) -> String {
        for _ in 0..300 {
            let out = self
                .lambda()
                .get_function_configuration()
                .function_name(name)
                .send()
                .await
                .unwrap();
            let state = out
                .state()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default();
            if state != "Pending" {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("function {name} stayed Pending for 30 s");
    }

    /// Sets the function's reserved concurrency: 0 makes Lambda (and LocalStack) answer every
    /// invoke with 429 `TooManyRequestsException`.
    pub async fn set_reserved_concurrency(&self, name: &str, reserved: i32) {
        self.lambda()
            .put_function_concurrency()
            .function_name(name)
            .reserved_concurrent_executions(reserved)
            .send()
            .await
            .unwrap();
    }

    /// Creates a standard queue and returns its URL.
    pub async fn create_queue(&self, name: &str) -> String {
        self.sqs()
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_string()
    }

    /// Sends one message (e.g. a Lambda destination record) to a queue.
    pub async fn send_message(&self, queue_url: &str, body: &Value) {
        self.sqs()
            .send_message()
            .queue_url(queue_url)
            .message_body(body.to_string())
            .send()
            .await
            .unwrap();
    }

    /// Messages in the queue, visible or not.
    pub async fn queue_depth(&self, queue_url: &str) -> u64 {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .sqs()
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let attrs = out.attributes().cloned().unwrap_or_default();
        [
            A::ApproximateNumberOfMessages,
            A::ApproximateNumberOfMessagesNotVisible,
        ]
        .iter()
        .filter_map(|a| attrs.get(a).and_then(|v| v.parse::<u64>().ok()))
        .sum()
    }

    /// A Lambda on-success / on-failure destination record, as Lambda writes it to a results
    /// queue ("Configuring destinations for asynchronous invocation").
    pub fn destination_record(
        &self,
        request_id: &str,
        function: &str,
        condition: &str,
        response_context: Value,
        response_payload: Value,
    ) -> Value {
        serde_json::json!({
            "version": "1.0", "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "requestContext": {"requestId": request_id,
                "functionArn": format!("arn:aws:lambda:{REGION}:{}:function:{function}:$LATEST", self.account()),
                "condition": condition, "approximateInvokeCount": 1},
            "requestPayload": {}, "responseContext": response_context, "responsePayload": response_payload
        })
    }
}

/// LocalStack for a test: the endpoint `scripts/test` started, or a container of its own.
pub struct LocalStack {
    emulator: Emulator,
    #[cfg(feature = "testcontainers")]
    _container: Option<
        testcontainers_modules::testcontainers::ContainerAsync<
            testcontainers_modules::localstack::LocalStack,
        >,
    >,
}

impl Deref for LocalStack {
    type Target = Emulator;
    fn deref(&self) -> &Emulator {
        &self.emulator
    }
}

impl LocalStack {
    /// `PUSHPOOL_TEST_LOCALSTACK_URL` when set (the `localstack-core` process of
    /// `scripts/test-localstack.sh`, or any LocalStack you run); else, with the `testcontainers`
    /// feature, a LocalStack container started for this test (needs a Docker engine; removed when
    /// the value is dropped). Otherwise `None`, so the test skips with a notice, except under
    /// `CI=true`, where it panics: the LocalStack suite must run there.
    pub async fn from_env_or_start() -> Option<LocalStack> {
        if let Ok(url) = std::env::var("PUSHPOOL_TEST_LOCALSTACK_URL") {
            if !url.is_empty() {
                let emulator =
                    Emulator::at(&url, Kind::LocalStack, "localstack-core process").await;
                eprintln!("aws tests: backend = LocalStack at {url} (localstack-core process, no Docker: function code is not run)");
                return Some(LocalStack {
                    emulator,
                    #[cfg(feature = "testcontainers")]
                    _container: None,
                });
            }
        }
        #[cfg(feature = "testcontainers")]
        {
            match Self::start_container().await {
                Ok(ls) => return Some(ls),
                Err(e) => {
                    assert!(
                        !under_ci(),
                        "LocalStack through testcontainers did not start: {e}"
                    );
                    eprintln!("SKIPPED: LocalStack through testcontainers did not start: {e}");
                    return None;
                }
            }
        }
        #[allow(unreachable_code)]
        {
            assert!(
                !under_ci(),
                "PUSHPOOL_TEST_LOCALSTACK_URL is not set: under CI=true the LocalStack suite must run (scripts/test starts LocalStack: scripts/test-localstack.sh)"
            );
            eprintln!("SKIPPED: PUSHPOOL_TEST_LOCALSTACK_URL not set and no testcontainers feature: LocalStack test not run");
            None
        }
    }

    /// Starts LocalStack's container (`testcontainers-modules`' `localstack` image) and waits
    /// until it is ready. Needs a Docker engine; with one, Lambda runs function code.
    #[cfg(feature = "testcontainers")]
    pub async fn start_container() -> Result<LocalStack, String> {
        use testcontainers_modules::testcontainers::runners::AsyncRunner;
        use testcontainers_modules::testcontainers::ImageExt;
        let container = testcontainers_modules::localstack::LocalStack::default()
            .with_env_var("SERVICES", "lambda,sqs,sts,iam,logs")
            .start()
            .await
            .map_err(|e| e.to_string())?;
        let host = container.get_host().await.map_err(|e| e.to_string())?;
        let port = container
            .get_host_port_ipv4(4566)
            .await
            .map_err(|e| e.to_string())?;
        let url = format!("http://{host}:{port}");
        eprintln!("aws tests: backend = LocalStack at {url} (testcontainers, Docker)");
        Ok(LocalStack {
            emulator: Emulator::at(&url, Kind::LocalStack, "testcontainers").await,
            _container: Some(container),
        })
    }
}

/// A zip archive holding one stored (uncompressed) file.
pub fn zip_one_file(name: &str, content: &[u8]) -> Vec<u8> {
    let crc = crc32(content);
    let size = content.len() as u32;
    let name = name.as_bytes();
    let mut out = Vec::new();
    let local = |out: &mut Vec<u8>| {
        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend(20u16.to_le_bytes()); // version needed
        out.extend(0u16.to_le_bytes()); // flags
        out.extend(0u16.to_le_bytes()); // stored
        out.extend(0u32.to_le_bytes()); // time, date
        out.extend(crc.to_le_bytes());
        out.extend(size.to_le_bytes());
        out.extend(size.to_le_bytes());
        out.extend((name.len() as u16).to_le_bytes());
        out.extend(0u16.to_le_bytes());
    };
    local(&mut out);
    out.extend(name);
    out.extend(content);
    let central_at = out.len() as u32;
    out.extend(0x0201_4b50u32.to_le_bytes());
    out.extend(20u16.to_le_bytes()); // made by
    out.extend(20u16.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out.extend(crc.to_le_bytes());
    out.extend(size.to_le_bytes());
    out.extend(size.to_le_bytes());
    out.extend((name.len() as u16).to_le_bytes());
    out.extend([0u8; 8]); // extra, comment, disk, internal attributes
    out.extend((0o100644u32 << 16).to_le_bytes()); // external attributes: a regular file
    out.extend(0u32.to_le_bytes()); // local header offset
    out.extend(name);
    let central_len = out.len() as u32 - central_at;
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend(1u16.to_le_bytes());
    out.extend(1u16.to_le_bytes());
    out.extend(central_len.to_le_bytes());
    out.extend(central_at.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

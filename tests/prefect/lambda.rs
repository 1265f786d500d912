//! Setting up moto for the `aws-lambda:push` test (moto does not check signatures; the
//! Authorization header only names the service).

use anyhow::ensure;
use base64::Engine as _;
use serde_json::json;

const ACCOUNT: &str = "123456789012";

fn auth(service: &str) -> String {
    format!("AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0")
}

/// Creates an IAM role and a function (an empty zip: moto echoes the payload).
pub async fn create_function(moto: &str, name: &str) -> anyhow::Result<()> {
    let role = format!("pushpool-test-{name}");
    let http = reqwest::Client::builder().no_proxy().build()?;
    let r = http
        .post(format!("{moto}/"))
        .header("Authorization", auth("iam"))
        .form(&[
            ("Action", "CreateRole"),
            ("Version", "2010-05-08"),
            ("RoleName", &role),
            ("AssumeRolePolicyDocument", "{}"),
        ])
        .send()
        .await?;
    let (status, text) = (r.status(), r.text().await?);
    ensure!(
        status.is_success() || text.contains("EntityAlreadyExists"),
        "CreateRole: {status} {text}"
    );
    let mut zip = vec![0x50, 0x4b, 0x05, 0x06];
    zip.extend([0u8; 18]);
    let r = http
        .post(format!("{moto}/2015-03-31/functions"))
        .header("Authorization", auth("lambda"))
        .json(&json!({
            "FunctionName": name, "Runtime": "python3.12", "Handler": "app.handler", "Timeout": 3,
            "Role": format!("arn:aws:iam::{ACCOUNT}:role/{role}"),
            "Code": {"ZipFile": base64::engine::general_purpose::STANDARD.encode(zip)}
        }))
        .send()
        .await?;
    let status = r.status();
    ensure!(
        status.is_success(),
        "CreateFunction: {status} {}",
        r.text().await?
    );
    Ok(())
}

//! `fake-workload-api SOCKET_PATH`: serves a fake SPIFFE Workload API on SOCKET_PATH with a
//! fresh CA for `example.org` and the SVID `spiffe://example.org/ns/default/sa/agent`, writes
//! the CA bundle to `SOCKET_PATH.bundle.pem`, and runs until Ctrl-C / SIGTERM.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use fake_workload_api::{FakeWorkloadApi, TestCa};

const SPIFFE_ID: &str = "spiffe://example.org/ns/default/sa/agent";

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let Some(socket) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fake-workload-api SOCKET_PATH");
        std::process::exit(2);
    };
    let ca = TestCa::new("example.org");
    let fake = FakeWorkloadApi::start(&socket, ca.issue_svid(SPIFFE_ID), vec![ca.bundle()]).await?;
    let mut bundle_path = fake.socket_path().as_os_str().to_owned();
    bundle_path.push(".bundle.pem");
    let bundle_path = PathBuf::from(bundle_path);
    std::fs::write(&bundle_path, ca.cert_pem())?;
    println!("SPIFFE_ENDPOINT_SOCKET={}", fake.endpoint());
    println!("spiffe_id={SPIFFE_ID}");
    println!("bundle={}", bundle_path.display());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    fake.shutdown().await;
    let _ = std::fs::remove_file(&bundle_path);
    Ok(())
}

//! A Rust volume service that a Python OpenStack client calls, through
//! RabbitMQ (or `warren serve`), with oslo.messaging's rabbit driver on the
//! Python side and warren-rpc's `amqp://` transport on this one.
//!
//! The service listens as server `rust-host1` on topic `volume` (API
//! version 3.1), answers `create_volume` and `get_volume` (an unknown volume
//! is a `VolumeNotFound` error with its data), takes `delete_volume` casts,
//! and sends a `volume.create.end` notification for each volume created.
//! `examples/oslo_interop.py` is the Python side.
//!
//! ```text
//! cargo run --example oslo_interop --features rpc-amqp -- amqp://guest:guest@127.0.0.1:5672/%2F
//! python3 examples/oslo_interop.py rabbit://guest:guest@127.0.0.1:5672/   # needs oslo.messaging
//! ```
//!
//! The URL is the only line that differs from the in-process version of
//! this service: `inproc://volume` would run it with no broker at all.
//! Press Enter (or close stdin) to stop; `--seconds N` stops after N
//! seconds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use warren::rpc::{
    transport_from_url, Context, Endpoint, HandlerError, Notifier, RpcServer, Target, Version,
};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Volume {
    id: String,
    name: String,
    size_gb: u32,
    host: String,
}

#[derive(Deserialize)]
struct CreateVolume {
    name: String,
    size_gb: u32,
}

#[derive(Deserialize)]
struct VolumeId {
    volume_id: String,
}

type Volumes = Arc<Mutex<HashMap<String, Volume>>>;

fn endpoint(volumes: Volumes, notifier: Notifier) -> Endpoint {
    let (v1, v2, v3) = (volumes.clone(), volumes.clone(), volumes);
    Endpoint::new()
        .with_version(Version::new(3, 1))
        .method("create_volume", move |ctx: Context, a: CreateVolume| {
            let volumes = v1.clone();
            let notifier = notifier.clone();
            async move {
                let id = format!("vol-{}", volumes.lock().len() + 1);
                let volume = Volume {
                    id: id.clone(),
                    name: a.name,
                    size_gb: a.size_gb,
                    host: "rust-host1".into(),
                };
                volumes.lock().insert(id.clone(), volume.clone());
                println!(
                    "created {id} for {} (request {})",
                    ctx.get_str("user").unwrap_or("?"),
                    ctx.request_id().unwrap_or("-")
                );
                // Notifications failing must not fail the call.
                if let Err(e) = notifier.info(&ctx, "volume.create.end", &volume).await {
                    eprintln!("notification not sent: {e}");
                }
                Ok::<_, HandlerError>(volume)
            }
        })
        .method("get_volume", move |_ctx: Context, a: VolumeId| {
            let found = v2.lock().get(&a.volume_id).cloned();
            async move {
                found.ok_or_else(|| {
                    HandlerError::new(
                        "VolumeNotFound",
                        format!("Volume {} could not be found.", a.volume_id),
                    )
                    .with_module("cinder.exception")
                    .with_data(serde_json::json!({ "volume_id": a.volume_id }))
                    .expected()
                })
            }
        })
        .method("delete_volume", move |_ctx: Context, a: VolumeId| {
            let gone = v3.lock().remove(&a.volume_id).is_some();
            println!(
                "delete {}: {}",
                a.volume_id,
                if gone { "done" } else { "no such volume" }
            );
            async { Ok::<_, HandlerError>(()) }
        })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut url = "amqp://guest:guest@127.0.0.1:5672/%2F".to_owned();
    let mut seconds = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => seconds = args.next().and_then(|s| s.parse::<u64>().ok()),
            other => url = other.to_owned(),
        }
    }
    let transport = transport_from_url(&url)?;
    let volumes: Volumes = Arc::default();
    let notifier = Notifier::new(transport.clone(), "volume.rust-host1");
    let server = RpcServer::new(
        transport.clone(),
        Target::new("volume").with_server("rust-host1"),
        vec![endpoint(volumes, notifier)],
    );
    server.start().await?;
    println!(
        "volume service (server rust-host1) listening on {}; Enter to stop",
        transport.url()
    );

    let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = stop_tx.send(());
    });
    match seconds {
        Some(s) => {
            tokio::select! {
                _ = stop => {}
                _ = tokio::time::sleep(Duration::from_secs(s)) => {}
            }
        }
        None => {
            let _ = stop.await;
        }
    }
    server.stop().await;
    let st = server.stats();
    println!(
        "stopped: {} calls, {} casts, {} expected errors",
        st.calls, st.casts, st.expected_failures
    );
    Ok(())
}

//! A cinder-like volume service over warren-rpc.
//!
//! The service runs one RPC server per host on topic `volume`; callers use a
//! small client API (like cinder's `volume/rpcapi.py`) that targets the host
//! owning the volume: `create_volume` is a cast (fire and forget),
//! `get_volume` a call (wait for the answer). A volume that does not exist
//! is an *expected* error: the caller gets `VolumeNotFound`, the server does
//! not count it as a failure.
//!
//! Run: `cargo run --example rpc_call_cast`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use warren::rpc::{
    transport_from_url, Context, Endpoint, HandlerError, PrepareOptions, RpcClient, RpcError,
    RpcServer, RpcServerOptions, Target, Transport, Version,
};

/// The RPC API version the service implements (and the client speaks).
const API: Version = Version::new(3, 1);

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Volume {
    id: String,
    name: String,
    size_gb: u32,
    host: String,
    status: String,
}

#[derive(Serialize, Deserialize)]
struct CreateVolume {
    volume_id: String,
    name: String,
    size_gb: u32,
}

#[derive(Serialize, Deserialize)]
struct VolumeRef {
    volume_id: String,
}

#[derive(Debug, thiserror::Error)]
#[error("Volume {0} could not be found.")]
struct VolumeNotFound(String);

/// The volume manager of one host: its endpoint.
fn volume_manager(host: &str) -> Endpoint {
    let volumes: Arc<Mutex<HashMap<String, Volume>>> = Arc::default();
    let (create, get) = (volumes.clone(), volumes);
    let host = host.to_owned();
    Endpoint::new()
        .with_version(API)
        .expected_error::<VolumeNotFound>()
        .method("create_volume", move |ctx: Context, a: CreateVolume| {
            let volume = Volume {
                id: a.volume_id.clone(),
                name: a.name,
                size_gb: a.size_gb,
                host: host.clone(),
                status: "available".into(),
            };
            println!(
                "[{}] create_volume {} ({} GB) for {} (request {})",
                host,
                volume.id,
                volume.size_gb,
                ctx.get_str("project_id").unwrap_or("?"),
                ctx.request_id().unwrap_or("?")
            );
            create.lock().insert(a.volume_id, volume);
            async { Ok::<_, HandlerError>(()) }
        })
        .method("get_volume", move |_ctx: Context, a: VolumeRef| {
            let found = get.lock().get(&a.volume_id).cloned();
            async move { found.ok_or(VolumeNotFound(a.volume_id)) }
        })
}

/// The client side, as a service would wrap it (cinder's `VolumeAPI`).
struct VolumeApi {
    client: RpcClient,
}

impl VolumeApi {
    fn new(transport: Arc<dyn Transport>) -> VolumeApi {
        // A call waits at most 30 s; a server that dies with it is noticed
        // after 10 s without its heartbeats (oslo's call_monitor_timeout).
        let client = RpcClient::new(transport, Target::new("volume").with_version(API))
            .with_timeout(Duration::from_secs(30))
            .with_call_monitor_timeout(Duration::from_secs(10))
            .with_version_cap(API);
        VolumeApi { client }
    }

    fn at(&self, host: &str) -> RpcClient {
        self.client.prepare(PrepareOptions::new().with_server(host))
    }

    async fn create_volume(
        &self,
        ctx: &Context,
        host: &str,
        id: &str,
        name: &str,
        size_gb: u32,
    ) -> Result<(), RpcError> {
        let args = CreateVolume {
            volume_id: id.into(),
            name: name.into(),
            size_gb,
        };
        self.at(host).cast(ctx, "create_volume", &args).await
    }

    async fn get_volume(&self, ctx: &Context, host: &str, id: &str) -> Result<Volume, RpcError> {
        self.at(host)
            .call(
                ctx,
                "get_volume",
                &VolumeRef {
                    volume_id: id.into(),
                },
            )
            .await
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Every transport opened on this URL shares one in-process broker.
    let url = "inproc://cinder-example";

    // Two volume hosts. One request at a time per host, so that requests to
    // a host run in the order they were sent (create, then get).
    let mut servers = Vec::new();
    for host in ["host1", "host2"] {
        let server = RpcServer::with_options(
            transport_from_url(url)?,
            Target::new("volume").with_server(host),
            vec![volume_manager(host)],
            RpcServerOptions { max_in_flight: 1 },
        );
        server.start().await?;
        servers.push(server);
    }

    let api = VolumeApi::new(transport_from_url(url)?);
    let ctx = Context::new()
        .with("user_id", "alice")
        .with("project_id", "demo")
        .with("request_id", "req-7c1b");

    api.create_volume(&ctx, "host1", "vol-1", "db-data", 100)
        .await?;
    api.create_volume(&ctx, "host2", "vol-2", "logs", 20)
        .await?;

    let v = api.get_volume(&ctx, "host1", "vol-1").await?;
    println!("get_volume(host1, vol-1) -> {v:?}");
    let v = api.get_volume(&ctx, "host2", "vol-2").await?;
    println!("get_volume(host2, vol-2) -> {v:?}");

    // vol-1 lives on host1: host2 does not know it.
    match api.get_volume(&ctx, "host2", "vol-1").await {
        Err(RpcError::Remote(e)) => println!(
            "get_volume(host2, vol-1) -> {} ({})",
            e.class(),
            e.message()
        ),
        other => println!("unexpected: {other:?}"),
    }

    // The cap keeps this client from using calls newer than 3.1.
    println!(
        "can send 3.0: {}, 3.2: {}",
        api.client.can_send_version(Version::new(3, 0)),
        api.client.can_send_version(Version::new(3, 2))
    );

    for s in &servers {
        s.stop().await;
        let st = s.stats();
        println!(
            "{}: {} casts, {} calls, {} expected errors, {} failures",
            s.target().server.as_deref().unwrap_or("?"),
            st.casts,
            st.calls,
            st.expected_failures,
            st.failed
        );
    }
    Ok(())
}

//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use warren_core::Broker;
use warren_rpc::{InprocTransport, Transport};

/// How long a test waits for an event before it fails. Generous: it only
/// matters when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Waits for `f`, failing the test if it does not complete in time.
pub async fn within<F: Future>(f: F) -> F::Output {
    match tokio::time::timeout(PATIENCE, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for an event"),
    }
}

/// A transport over a fresh broker, and the broker.
pub fn fresh() -> (Arc<dyn Transport>, Broker) {
    let broker = Broker::new();
    (Arc::new(InprocTransport::new(broker.clone())), broker)
}

/// Another transport (its own reply queue) over the same broker.
pub fn another(broker: &Broker) -> Arc<dyn Transport> {
    Arc::new(InprocTransport::new(broker.clone()))
}

//! Runs `warren-wire` standalone, as `warren serve` does.
//!
//! ```sh
//! cargo run -p warren-wire --example serve                # 127.0.0.1:5672, guest/guest
//! cargo run -p warren-wire --example serve -- warren.toml # a config file (see `ServeConfig`)
//! WARREN_LISTEN=127.0.0.1:5680 cargo run -p warren-wire --example serve
//! ```

use warren_wire::ServeConfig;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut config = match std::env::args().nth(1) {
        Some(path) => ServeConfig::load(path)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        None => ServeConfig::default(),
    };
    if let Ok(listen) = std::env::var("WARREN_LISTEN") {
        config.listen = listen;
    }
    warren_wire::serve(config).await
}

//! A greyrouter server started in this process on 127.0.0.1:0, shared by the load-test tests.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use greyrouter::config::Config;
use greyrouter::server::App;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Longest wait for a server to stop.
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// A server running in this process.
pub struct Server {
    pub target: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
    _data_dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a server with `config` on an ephemeral port.
    pub async fn start(mut config: Config) -> Server {
        // The default store keeps its data in ./greyrouter-data: each server gets its own.
        let data_dir = (config.store == "durable" && config.data_dir == Config::default().data_dir)
            .then(|| tempfile::tempdir().expect("a data directory"));
        if let Some(dir) = &data_dir {
            config.data_dir = dir.path().to_owned();
        }
        let app = App::start(config).await.expect("server starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        Server {
            target: format!("http://{addr}"),
            stop,
            task,
            _data_dir: data_dir,
        }
    }

    /// Stops the server and waits for it to finish cleanly.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(STOP_DEADLINE, self.task)
            .await
            .expect("deadline passed")
            .expect("server task")
            .expect("server ran cleanly");
    }
}

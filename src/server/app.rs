//! The app wiring on top: what an application plugs into each shard ([`ShardApp`], built by an [`AppFactory`]),
//! and [`start`], which starts the shard runtime with a service that hands every connection to [`super::conn`].

use std::rc::Rc;
use std::sync::Arc;

use glommio::net::TcpStream;

use super::config::ServerConfig;
use super::http::Router;
use super::runtime::shard::{ServerHandle, start_shards};
use super::runtime::{ServiceFactory, ShardCtx, ShardService};
use super::socketio::{self, SocketIo};
use super::{conn, engine};

/// What an application plugs into each shard. Built by the [`AppFactory`] on every shard at start-up.
#[derive(Default)]
pub struct ShardApp {
    /// Socket.IO namespaces and their handlers (served on `ServerConfig::socketio_paths`). `None`: only the
    /// default namespace `/`, with no handlers.
    pub socketio: Option<SocketIo>,
    /// REST routes; requests no other route takes are offered to it.
    pub router: Option<Rc<dyn Router>>,
}

impl std::fmt::Debug for ShardApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardApp")
            .field("router", &self.router.is_some())
            .finish_non_exhaustive()
    }
}

/// Called once on each shard, inside its executor, before it accepts connections. It may store per-shard state
/// with [`ShardCtx::set_state`], schedule timers and spawn local tasks.
pub type AppFactory = Arc<dyn Fn(&Rc<ShardCtx>) -> ShardApp + Send + Sync>;

/// What the runtime of a shard calls: connections go to [`conn`], shutdown closes the Engine.IO sessions.
struct AppService;

impl ShardService for AppService {
    fn accept(&self, shard: &Rc<ShardCtx>, stream: TcpStream) {
        conn::spawn_connection(shard, stream, Vec::new());
    }
    fn begin_shutdown(&self, shard: &Rc<ShardCtx>) {
        engine::close_all_for_shutdown(shard);
    }
    fn is_drained(&self, shard: &Rc<ShardCtx>) -> bool {
        engine::session_count(shard) == 0
    }
}

/// Start `config.shards` shards serving the app `app` builds on each. Returns once every shard listens (see
/// [`start_shards`]).
pub fn start(config: ServerConfig, app: AppFactory) -> std::io::Result<ServerHandle> {
    let services: ServiceFactory = Arc::new(move |shard: &Rc<ShardCtx>| {
        let built = app(shard);
        socketio::install(shard, built.socketio);
        shard.set_state(conn::Routes {
            router: built.router,
        });
        Rc::new(AppService) as Rc<dyn ShardService>
    });
    start_shards(config, services)
}

//! The conformance server's application (issue item 8): on `/` and `/custom` it emits `auth` with the CONNECT
//! auth payload, answers `message` with `message-back` (same arguments, binary included) and acknowledges
//! `message-with-ack` with the same arguments. The raw Engine.IO echo at `/engine.io/` is built into the engine.
//!
//! Two extra events, unused by the official suites, let the interop tests reach the rest of the handler API:
//! `ask-client` (the server emits `question` with an ack request, then emits `answer` with the client's ack
//! arguments as one array) and `disconnect-me` (the server disconnects the socket from its namespace).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::proto::RawJson;

use super::app::{AppFactory, ShardApp};
use super::runtime::ShardCtx;
use super::socketio::{Event, Namespace, Socket, SocketIo};

fn configure(ns: &mut Namespace) {
    ns.on_connect(|socket: Socket, auth: Option<RawJson>| async move {
        let auth = auth
            .map(RawJson::into_string)
            .unwrap_or_else(|| "{}".to_owned());
        // `auth` is validated JSON from the decoder: `[<auth>]` is a valid array.
        if let Ok(args) = RawJson::new(format!("[{auth}]")) {
            socket.emit("auth", &args);
        }
        Ok(())
    })
    .on("message", |socket: &Socket, event: Event| {
        socket.emit_binary("message-back", event.args, event.attachments);
    })
    .on("message-with-ack", |_socket: &Socket, event: Event| {
        if let Some(ack) = event.ack {
            ack.send_with_binary(event.args, event.attachments);
        }
    })
    .on("ask-client", |socket: &Socket, event: Event| {
        let reply = socket.emit_with_ack(
            "question",
            event.args,
            event.attachments,
            Duration::from_secs(10),
        );
        let socket = socket.clone();
        glommio::spawn_local(async move {
            match reply.await {
                Ok(r) => {
                    if let Ok(args) = RawJson::new(format!("[{}]", r.args.as_str())) {
                        socket.emit_binary("answer", args, r.attachments);
                    }
                }
                Err(e) => tracing::info!(error = %e, "conformance: question not acknowledged"),
            }
        })
        .detach();
    })
    .on("disconnect-me", |socket: &Socket, _event: Event| {
        socket.disconnect()
    });
}

/// The conformance application for [`super::start`].
pub fn app() -> AppFactory {
    Arc::new(|_shard: &Rc<ShardCtx>| {
        let mut io = SocketIo::new();
        configure(io.namespace("/"));
        configure(io.namespace("/custom"));
        ShardApp {
            socketio: Some(io),
            router: None,
        }
    })
}

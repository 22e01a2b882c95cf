//! The long-polling transport: the handshake, one GET and one POST at a time, each driving the [`Session`].

use std::rc::Rc;
use std::sync::Arc;

use crate::proto::engine::Packet;
use crate::proto::{self, EioVersion, PayloadForm};

use super::super::http::{Next, Request, Response};
use super::super::io::{self, Stream};
use super::super::runtime::ShardCtx;
use super::super::runtime::metrics::{ProtocolErrorKind, ShardMetrics};
use super::outbox::OutItem;
use super::session::{CloseHow, EngineHandler, GetEnd, Phase, Session};
use super::transport::{Action, Input};
use super::{CloseReason, eio_error, proto_limits, refusal};

/// A polling handshake: a new session with `handler`, answered with its open packet and whatever the handler's
/// `on_open` queued (v3: the implicit CONNECT).
pub(super) fn handshake(
    shard: &Rc<ShardCtx>,
    req: &Request,
    version: EioVersion,
    handler: Rc<dyn EngineHandler>,
) -> Next {
    let supports_binary = req.query_param("b64").is_none();
    let s = Session::create(
        shard,
        version,
        Phase::Polling,
        supports_binary,
        handler.clone(),
    );
    let open = OutItem::Text(Arc::from(s.handshake(Phase::Polling).to_packet_text()));
    handler.on_open(&s);
    let mut items = vec![open];
    {
        let mut st = s.st.borrow_mut();
        items.extend(st.outbox.take_items());
    }
    Next::Respond(s.payload_response(&items))
}

struct GetGuard<'a>(&'a Session);
impl Drop for GetGuard<'_> {
    fn drop(&mut self) {
        self.0.st.borrow_mut().transport.handle(Input::PollEnds);
    }
}

/// A polling GET: answered at once, or when packets are queued, the session ends or an upgrade probes.
pub(super) async fn poll_get(s: &Rc<Session>, stream: &Stream, buf: &mut Vec<u8>) -> Next {
    let actions = s.st.borrow_mut().transport.handle(Input::PollArrives);
    for action in actions {
        match action {
            Action::Serve => {}
            Action::AnswerPoll(end) => return answer(s, end),
            Action::Refuse(e) => return refusal(e),
            Action::Close(reason) => {
                s.shard
                    .metrics()
                    .protocol_error(ProtocolErrorKind::EngineIo);
                s.close(reason, CloseHow::SendClose);
            }
            // A poll arriving asks for nothing else.
            _ => {}
        }
    }
    let _guard = GetGuard(s);
    let limit = s.shard.config().http_head_bytes_max + s.shard.config().payload_bytes_max;
    loop {
        let seen = s.changed.epoch();
        let actions = {
            let mut st = s.st.borrow_mut();
            let queued = !st.outbox.has_no_items();
            st.transport.handle(Input::PollWakes { queued })
        };
        match actions.as_slice() {
            [Action::AnswerPoll(end)] => return answer(s, *end),
            [Action::AnswerPollWithQueue] => {
                let items = s.st.borrow_mut().outbox.take_items();
                return Next::Respond(s.payload_response(&items));
            }
            [Action::Refuse(e)] => return refusal(*e),
            _ => {}
        }
        let read =
            futures_lite::future::or(async { Some(io::read_some(stream, buf).await) }, async {
                s.changed.changed(seen).await;
                None
            })
            .await;
        match read {
            None => {}
            Some(Ok(0)) | Some(Err(_)) => {
                s.close(CloseReason::PollAborted, CloseHow::Abort);
                return Next::Done;
            }
            Some(Ok(n)) => {
                ShardMetrics::add(&s.shard.metrics().bytes_in, n as u64);
                if buf.len() > limit {
                    s.close(CloseReason::PipelinedBehindPoll, CloseHow::Abort);
                    return Next::Done;
                }
            }
        }
    }
}

pub(super) fn poll_post(s: &Rc<Session>, req: &Request) -> Next {
    let actions = s.st.borrow_mut().transport.handle(Input::PostArrives);
    if let [Action::Refuse(e)] = actions.as_slice() {
        return refusal(*e);
    }
    let cfg = s.shard.config();
    if req.body.len() > cfg.payload_bytes_max {
        s.shard
            .metrics()
            .protocol_error(ProtocolErrorKind::EngineIo);
        s.close(
            CloseReason::PayloadTooLarge {
                bytes: req.body.len(),
                max_bytes: cfg.payload_bytes_max,
            },
            CloseHow::SendClose,
        );
        return Next::RespondClose(Response::error(413, "payload too large"));
    }
    let form = PayloadForm::from_content_type(s.version, req.header("content-type"));
    let packets = match proto::decode_payload(s.version, form, &req.body, &proto_limits(cfg)) {
        Ok(p) => p,
        Err(e) => {
            s.shard
                .metrics()
                .protocol_error(ProtocolErrorKind::EngineIo);
            s.close(
                CloseReason::Protocol(format!("invalid polling payload: {e}")),
                CloseHow::SendClose,
            );
            return eio_error(3, "Bad request");
        }
    };
    for p in packets {
        if s.is_closed() {
            break;
        }
        if let Err(reason) = s.on_packet(p) {
            s.shard
                .metrics()
                .protocol_error(ProtocolErrorKind::EngineIo);
            s.close(reason, CloseHow::SendClose);
            return eio_error(3, "Bad request");
        }
    }
    Next::Respond(Response::new(200, "text/html", "ok"))
}

/// Answer the pending poll with a noop or a close packet.
fn answer(s: &Session, end: GetEnd) -> Next {
    let packet = match end {
        GetEnd::Noop => Packet::Noop,
        GetEnd::Close => Packet::Close,
    };
    Next::Respond(s.payload_response(&[OutItem::packet(&packet)]))
}

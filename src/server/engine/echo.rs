//! The raw Engine.IO echo of the conformance server: every message goes back as it came.

use std::rc::Rc;
use std::sync::Arc;

use super::CloseReason;
use super::outbox::OutItem;
use super::session::{EngineHandler, Session};

/// The echo handler (one per session; it holds nothing).
#[derive(Debug, Default)]
pub(crate) struct Echo;

impl Echo {
    /// The handler of a new echo session.
    pub(crate) fn handler() -> Rc<dyn EngineHandler> {
        Rc::new(Echo)
    }
}

impl EngineHandler for Echo {
    fn on_open(&self, _session: &Rc<Session>) {}
    fn on_text(&self, session: &Rc<Session>, text: &str) -> Result<(), CloseReason> {
        session.send_items([OutItem::message(text)]);
        Ok(())
    }
    fn on_binary(&self, session: &Rc<Session>, data: &[u8]) -> Result<(), CloseReason> {
        session.send_items([OutItem::Binary(Arc::from(data))]);
        Ok(())
    }
    fn on_close(&self, _session: &Rc<Session>, _reason: &CloseReason) {}
}

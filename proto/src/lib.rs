//! Sans-IO Engine.IO / Socket.IO codec.

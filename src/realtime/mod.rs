//! realtime (see README.md, Architecture).

//! server (see README.md, Architecture).

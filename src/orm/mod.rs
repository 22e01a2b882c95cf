//! orm (see README.md, Architecture).

//! What `shardcast serve` adds around the server and the realtime framework for its first hour and its first outage
//! (issue 15): dev mode and its stored secret ([`dev`]), the room-token key derived from the access-token secret
//! ([`keys`]), loud start-up checks ([`startup`]), database health and `/readyz` ([`health`]), and the live page
//! at `/` ([`page`]).

pub mod dev;
pub mod health;
pub mod keys;
pub mod page;
pub mod startup;

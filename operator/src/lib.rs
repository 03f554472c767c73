//! The VideoDelivery operator: a rotated keyring Secret and a scaled fleet of agents per VideoDelivery.

pub mod admin;
pub mod controller;
pub mod crd;
pub mod expose;
pub mod inject;
pub mod keyring;
pub mod leader;
pub mod metrics;
pub mod resources;
pub mod status;
pub mod webhook;

//! istio-vm: onboard a virtual machine into an Istio mesh.
//!
//! Data flows one way: bundle -> findings -> plan -> apply -> report. Everything
//! up to the plan is pure; only `apply` and `verify` touch the system.

pub mod apply;
pub mod bundle;
pub mod capture;
pub mod chroot;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod extra_ca;
pub mod layout;
pub mod logging;
pub mod plan;
pub mod report;
pub mod sysroot;
pub mod units;
pub mod validate;
pub mod verify;

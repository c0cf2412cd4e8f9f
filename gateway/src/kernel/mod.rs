//! Kernel-socket datapath (tokio).

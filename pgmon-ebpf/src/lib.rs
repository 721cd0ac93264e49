#![no_std]
//! Library target so dependents rebuild when the kernel programs change (aya-template layout).

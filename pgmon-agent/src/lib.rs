//! pgmon's host agent as a library: the pure parts (wire, query) and the parts that touch
//! the kernel or the database (capture, attribution), wired together by `cli::run`.

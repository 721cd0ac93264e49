//! TLS figures of `cargo xtask bench` (issue 18), on a cluster of their own with `ssl = on`
//! (a self-signed certificate, [`Cluster::enable_ssl`]):
//!
//! 1. Throughput: `pgbench -S -c 2 -j 2` over TCP with `sslmode=require`, the agent attached
//!    (TLS capture on) ÷ detached, within each round, the order alternating; medians over
//!    the rounds and the sign-test interval, as in the overhead section.
//! 2. What a process that is not a backend pays for its own TLS calls while the agent is
//!    attached: the libssl uprobes fire in every process that maps the probed file, and the
//!    programs turn it away after one pid-state lookup. A loop in this process, over a
//!    unix socketpair with a TLS session on it, makes the calls PostgreSQL makes —
//!    `SSL_write` then `SSL_get_error`, `SSL_read` then `SSL_get_error` — through the same
//!    `libssl.so.3` file the postmaster maps (loaded with `dlopen`, so xtask links nothing
//!    that set-up installs), and its thread's CPU time per call is taken detached and
//!    attached, alternating.

use std::{
    ffi::{CStr, CString, c_char, c_int, c_long, c_void},
    fmt::Write as _,
    os::fd::AsRawFd as _,
    os::unix::net::UnixStream,
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use pgmon_tests::{Agent, Cluster, ClusterOptions, PgVersion, Transport, free_port};

use crate::bench::agent_config;
use crate::bench_host::thread_cpu_ns;
use crate::bench_overhead::{SETTLE, select_only_run};
use crate::bench_stats::{median, median_interval, ordinal, sign_test_rank};

/// Arguments of the TLS section.
#[derive(clap::Args)]
pub struct TlsBenchArgs {
    /// Rounds of the TLS throughput comparison (one detached and one attached run each).
    #[arg(long, default_value_t = 12)]
    tls_rounds: usize,
    /// Seconds per pgbench run of the TLS comparison.
    #[arg(long, default_value_t = 8)]
    tls_duration: u64,
    /// Run only this benchmark, print its section and write it to `bench/TLS.md`.
    #[arg(long)]
    pub tls_only: bool,
}

/// Rounds of the SSL-call loop comparison.
const SSL_ROUNDS: usize = 10;

/// Loop iterations per measurement; each makes four SSL calls (a write and a read each way),
/// each followed by `SSL_get_error`: ~1 s of CPU here.
const SSL_ITERATIONS: u64 = 100_000;

/// What the section measured.
pub struct TlsCost {
    /// pgbench TPS per round, detached and attached.
    pub detached_tps: Vec<f64>,
    pub attached_tps: Vec<f64>,
    /// CPU nanoseconds per SSL call (with its `SSL_get_error`) per round.
    pub ssl_detached_ns: Vec<f64>,
    pub ssl_attached_ns: Vec<f64>,
    /// The libssl file the agent probes (its `status`).
    pub library: String,
}

/// Runs both measurements; returns the report section (Markdown) and its JSON.
pub fn section(binary: &Path, args: &TlsBenchArgs) -> Result<(String, serde_json::Value)> {
    let c = measure(binary, args)?;
    let ratios: Vec<f64> = c
        .attached_tps
        .iter()
        .zip(&c.detached_tps)
        .map(|(a, d)| a / d)
        .collect();
    let diffs: Vec<f64> = c
        .ssl_attached_ns
        .iter()
        .zip(&c.ssl_detached_ns)
        .map(|(a, d)| a - d)
        .collect();
    let list = |v: &[f64], digits: usize| {
        v.iter()
            .map(|x| format!("{x:.digits$}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let ratio = median(ratios.clone());
    let interval = median_interval(ratios.clone());
    let diff = median(diffs.clone());
    let diff_interval = median_interval(diffs.clone());
    let rank = ordinal(sign_test_rank(args.tls_rounds).unwrap_or(0));
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## TLS sessions\n\nPostgreSQL 15 with `ssl = on` (self-signed certificate), \
         `pgbench -S -c 2 -j 2 -T {}` over TCP with `sslmode=require` (scale 10), {} rounds, \
         the agent attached (TLS capture on `{}`) ÷ detached within each round, the order \
         alternating. Target ≥ 0.95. The interval is the sign test's (the {rank} smallest and \
         largest of the rounds' ratios).\n\n\
         | | median TPS | median ratio | 95 % interval | ratios |\n|---|---|---|---|---|\n\
         | detached | {:.0} | 1 | | |\n| attached | {:.0} | {ratio:.3} | {} | {} |\n",
        args.tls_duration,
        args.tls_rounds,
        c.library,
        median(c.detached_tps.clone()),
        median(c.attached_tps.clone()),
        interval.map_or(String::new(), |(lo, hi)| format!("{lo:.3}–{hi:.3}")),
        list(&ratios, 3),
    );
    let _ = writeln!(
        md,
        "What a process that is not a backend pays for its TLS calls with the agent attached: \
         a loop over a TLS session on a unix socketpair in this process, through the same \
         `{}` (`SSL_write`/`SSL_read`, each followed by `SSL_get_error`, as PostgreSQL calls \
         them), its thread's CPU time per call, {SSL_ROUNDS} rounds, the order alternating. \
         Every such call hits the uprobes, whose programs turn it away after one pid-state \
         lookup.\n\n\
         | | median ns per call | 95 % interval | rounds (ns) |\n|---|---|---|---|\n\
         | detached | {:.0} | | {} |\n| attached | {:.0} | | {} |\n\
         | difference (median of the rounds') | {diff:.0} | {} | {} |\n",
        c.library,
        median(c.ssl_detached_ns.clone()),
        list(&c.ssl_detached_ns, 0),
        median(c.ssl_attached_ns.clone()),
        list(&c.ssl_attached_ns, 0),
        diff_interval.map_or(String::new(), |(lo, hi)| format!("{lo:.0} to {hi:.0}")),
        list(&diffs, 0),
    );
    let json = serde_json::json!({
        "library": c.library,
        "detached_tps": c.detached_tps, "attached_tps": c.attached_tps,
        "median_ratio": ratio, "median_ratio_interval_95": interval.map(|(lo, hi)| [lo, hi]),
        "ssl_call_detached_ns": c.ssl_detached_ns, "ssl_call_attached_ns": c.ssl_attached_ns,
        "ssl_call_difference_ns": diff,
        "ssl_call_difference_interval_95": diff_interval.map(|(lo, hi)| [lo, hi]),
    });
    Ok((md, json))
}

fn measure(binary: &Path, args: &TlsBenchArgs) -> Result<TlsCost> {
    let cluster = Cluster::start(
        PgVersion::Pg15,
        ClusterOptions {
            max_connections: 100,
            ..ClusterOptions::default()
        },
    )?;
    cluster.create_role_with_db("bench")?;
    cluster.pgbench_init("bench", "bench", 10)?;
    cluster.enable_ssl()?;
    let start_agent = || -> Result<(Agent, String)> {
        let port = free_port();
        let agent = Agent::start(
            binary,
            &agent_config(&cluster, port, "auto"),
            format!("127.0.0.1:{port}"),
        )?;
        let tls = agent.status_json()?["capture"]["tls"].clone();
        if tls["state"] != "on" {
            bail!("TLS capture is not on, the figures would not be of it: {tls}");
        }
        let library = tls["library"].as_str().unwrap_or_default().to_owned();
        Ok((agent, library))
    };
    let run = select_only_run(Transport::Tcp, args.tls_duration);
    let pgbench =
        || -> Result<f64> { Ok(cluster.pgbench_env(&run, &[("PGSSLMODE", "require")])?.tps) };
    let mut cost = TlsCost {
        detached_tps: Vec::new(),
        attached_tps: Vec::new(),
        ssl_detached_ns: Vec::new(),
        ssl_attached_ns: Vec::new(),
        library: String::new(),
    };
    for round in 0..args.tls_rounds {
        let attached = || -> Result<(f64, String)> {
            let (mut agent, library) = start_agent()?;
            std::thread::sleep(SETTLE);
            let tps = pgbench()?;
            agent.stop()?;
            Ok((tps, library))
        };
        let detached = || -> Result<f64> {
            std::thread::sleep(SETTLE);
            pgbench()
        };
        let (d, (a, library)) = if round % 2 == 0 {
            let d = detached()?;
            (d, attached()?)
        } else {
            let a = attached()?;
            (detached()?, a)
        };
        eprintln!(
            "bench: TLS round {round}: detached {d:.0} tps, attached {a:.0} tps ({:.3})",
            a / d
        );
        cost.detached_tps.push(d);
        cost.attached_tps.push(a);
        cost.library = library;
    }

    let ssl = Libssl::open()?;
    let mapped = ssl.mapped_path()?;
    let probed =
        std::fs::canonicalize(&cost.library).unwrap_or_else(|_| cost.library.clone().into());
    if std::fs::canonicalize(&mapped)? != probed {
        bail!(
            "this process loaded {} but the agent probes {}: the loop would not measure the probes",
            mapped.display(),
            probed.display()
        );
    }
    let (crt, key) = (
        cluster.base_dir().join("server.crt"),
        cluster.base_dir().join("server.key"),
    );
    for round in 0..SSL_ROUNDS {
        let attached = || -> Result<f64> {
            let (agent, _) = start_agent()?;
            std::thread::sleep(SETTLE);
            let ns = ssl.loop_ns_per_call(&crt, &key)?;
            drop(agent);
            Ok(ns)
        };
        let (d, a) = if round % 2 == 0 {
            let d = ssl.loop_ns_per_call(&crt, &key)?;
            (d, attached()?)
        } else {
            let a = attached()?;
            (ssl.loop_ns_per_call(&crt, &key)?, a)
        };
        eprintln!("bench: SSL call of another process: detached {d:.0} ns, attached {a:.0} ns");
        cost.ssl_detached_ns.push(d);
        cost.ssl_attached_ns.push(a);
    }
    Ok(cost)
}

/// `SSL_FILETYPE_PEM` (openssl/ssl.h).
const SSL_FILETYPE_PEM: c_int = 1;

type MethodFn = unsafe extern "C" fn() -> *const c_void;
type CtxNewFn = unsafe extern "C" fn(*const c_void) -> *mut c_void;
type CtxFileFn = unsafe extern "C" fn(*mut c_void, *const c_char, c_int) -> c_int;
type CtxFreeFn = unsafe extern "C" fn(*mut c_void);
type SslNewFn = unsafe extern "C" fn(*mut c_void) -> *mut c_void;
type SslSetFdFn = unsafe extern "C" fn(*mut c_void, c_int) -> c_int;
type SslHandshakeFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type SslIoFn = unsafe extern "C" fn(*mut c_void, *mut c_void, c_int) -> c_int;
type SslGetErrorFn = unsafe extern "C" fn(*const c_void, c_int) -> c_int;
type SslFreeFn = unsafe extern "C" fn(*mut c_void);
type ErrGetFn = unsafe extern "C" fn() -> c_long;

/// The few libssl entry points the loop needs, from `dlopen("libssl.so.3")`.
struct Libssl {
    handle: *mut c_void,
    server_method: MethodFn,
    client_method: MethodFn,
    ctx_new: CtxNewFn,
    ctx_use_certificate_file: CtxFileFn,
    ctx_use_private_key_file: CtxFileFn,
    ctx_free: CtxFreeFn,
    ssl_new: SslNewFn,
    set_fd: SslSetFdFn,
    accept: SslHandshakeFn,
    connect: SslHandshakeFn,
    read: SslIoFn,
    write: SslIoFn,
    get_error: SslGetErrorFn,
    free: SslFreeFn,
    err_get_error: ErrGetFn,
}

/// A pointer handed to the handshake thread (the SSL object is used by one thread at a
/// time: the server's by that thread until it is joined).
struct SendPtr(*mut c_void);
// SAFETY: see the type's doc: never used from two threads at once.
unsafe impl Send for SendPtr {}

impl Libssl {
    fn open() -> Result<Self> {
        let name = c"libssl.so.3";
        // SAFETY: a constant, NUL-terminated library name.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            bail!("dlopen(libssl.so.3): {}", dlerror());
        }
        fn sym<T: Copy>(handle: *mut c_void, name: &CStr) -> Result<T> {
            // SAFETY: a handle from dlopen and a NUL-terminated name.
            let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
            if p.is_null() {
                bail!("libssl.so.3 has no {name:?}: {}", dlerror());
            }
            // SAFETY: T is the function-pointer type of the symbol, as openssl/ssl.h and
            // openssl/err.h declare it; a function pointer has a data pointer's size.
            Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
        }
        // ERR_get_error lives in libcrypto, which libssl pulls in: RTLD_DEFAULT finds it.
        Ok(Self {
            handle,
            server_method: sym(handle, c"TLS_server_method")?,
            client_method: sym(handle, c"TLS_client_method")?,
            ctx_new: sym(handle, c"SSL_CTX_new")?,
            ctx_use_certificate_file: sym(handle, c"SSL_CTX_use_certificate_file")?,
            ctx_use_private_key_file: sym(handle, c"SSL_CTX_use_PrivateKey_file")?,
            ctx_free: sym(handle, c"SSL_CTX_free")?,
            ssl_new: sym(handle, c"SSL_new")?,
            set_fd: sym(handle, c"SSL_set_fd")?,
            accept: sym(handle, c"SSL_accept")?,
            connect: sym(handle, c"SSL_connect")?,
            read: sym(handle, c"SSL_read")?,
            write: sym(handle, c"SSL_write")?,
            get_error: sym(handle, c"SSL_get_error")?,
            free: sym(handle, c"SSL_free")?,
            err_get_error: sym(libc::RTLD_DEFAULT, c"ERR_get_error")?,
        })
    }

    /// The libssl file this process mapped (`/proc/self/maps`).
    fn mapped_path(&self) -> Result<std::path::PathBuf> {
        let maps = std::fs::read_to_string("/proc/self/maps")?;
        maps.lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| {
                Path::new(p)
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("libssl.so"))
            })
            .map(Into::into)
            .context("libssl.so.3 is loaded but not in /proc/self/maps")
    }

    /// One loop: a TLS session over a fresh socketpair (server with `crt`/`key`), then
    /// [`SSL_ITERATIONS`] × (client write, server read, server write, client read), each
    /// followed by `SSL_get_error`; CPU nanoseconds per SSL call.
    fn loop_ns_per_call(&self, crt: &Path, key: &Path) -> Result<f64> {
        let (a, b) = UnixStream::pair()?;
        let crt = CString::new(crt.as_os_str().as_encoded_bytes())?;
        let key = CString::new(key.as_os_str().as_encoded_bytes())?;
        // SAFETY: the calls follow OpenSSL's documented use: contexts from methods, files
        // given as NUL-terminated paths, SSL objects on fds that outlive them (the streams
        // are dropped after the frees below), buffers valid for the lengths given.
        unsafe {
            let sctx = (self.ctx_new)((self.server_method)());
            let cctx = (self.ctx_new)((self.client_method)());
            if sctx.is_null() || cctx.is_null() {
                bail!("SSL_CTX_new failed (error {:#x})", (self.err_get_error)());
            }
            if (self.ctx_use_certificate_file)(sctx, crt.as_ptr(), SSL_FILETYPE_PEM) != 1
                || (self.ctx_use_private_key_file)(sctx, key.as_ptr(), SSL_FILETYPE_PEM) != 1
            {
                bail!(
                    "loading {crt:?} / {key:?} failed (error {:#x})",
                    (self.err_get_error)()
                );
            }
            let server = (self.ssl_new)(sctx);
            let client = (self.ssl_new)(cctx);
            (self.set_fd)(server, a.as_raw_fd());
            (self.set_fd)(client, b.as_raw_fd());
            let accept = self.accept;
            let server_ptr = SendPtr(server);
            let handshake = std::thread::spawn(move || {
                let s = server_ptr;
                accept(s.0)
            });
            let connected = (self.connect)(client);
            let accepted = handshake.join().expect("handshake thread");
            if connected != 1 || accepted != 1 {
                bail!(
                    "TLS handshake over the socketpair failed (connect {connected}, accept \
                     {accepted}, error {:#x})",
                    (self.err_get_error)()
                );
            }
            let mut out = [0x5au8; 64];
            let mut back = [0u8; 64];
            let io = |f: SslIoFn, ssl: *mut c_void, buf: *mut u8| -> Result<()> {
                let n = f(ssl, buf.cast(), 64);
                let e = (self.get_error)(ssl, n);
                if n != 64 {
                    bail!("SSL call returned {n} (SSL_get_error {e})");
                }
                Ok(())
            };
            let start = thread_cpu_ns();
            for _ in 0..SSL_ITERATIONS {
                io(self.write, client, out.as_mut_ptr())?;
                io(self.read, server, back.as_mut_ptr())?;
                io(self.write, server, back.as_mut_ptr())?;
                io(self.read, client, out.as_mut_ptr())?;
            }
            let ns = (thread_cpu_ns() - start) as f64 / (4 * SSL_ITERATIONS) as f64;
            (self.free)(server);
            (self.free)(client);
            (self.ctx_free)(sctx);
            (self.ctx_free)(cctx);
            drop((a, b));
            Ok(ns)
        }
    }
}

impl Drop for Libssl {
    fn drop(&mut self) {
        // SAFETY: the handle came from dlopen and no function of it is used afterwards.
        unsafe { libc::dlclose(self.handle) };
    }
}

/// dlerror()'s message.
fn dlerror() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl call.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-null, NUL-terminated (above).
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

//! A small encoder of protocol messages for test fixtures (§54.7 Message Formats): each
//! function returns one whole message as bytes, with fixed, plausible contents where the
//! parser reads nothing. Compiled for the crate's tests and behind the `fixtures` feature
//! (pgmon-agent's pipeline tests); not for production code.

/// A typed message: type byte, length word (counting itself), body.
pub fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ty];
    v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// The messages of `parts`, one after another (one chunk).
pub fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn z(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn untyped(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32 + 4).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

// ---- startup phase ----

/// A StartupMessage of protocol 3.`minor` with these parameters (untyped, length first).
pub fn startup(minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut b = ((3u32 << 16) | u32::from(minor)).to_be_bytes().to_vec();
    for (k, v) in params {
        b.extend(z(k));
        b.extend(z(v));
    }
    b.push(0);
    untyped(&b)
}

/// An SSLRequest (code 80877103).
pub fn ssl_request() -> Vec<u8> {
    untyped(&80_877_103u32.to_be_bytes())
}

/// A GSSENCRequest (code 80877104).
pub fn gss_request() -> Vec<u8> {
    untyped(&80_877_104u32.to_be_bytes())
}

/// A CancelRequest for process 4242 with a secret key of `key_len` bytes (4 in 3.0; up to 256 in 3.2).
pub fn cancel_request(key_len: usize) -> Vec<u8> {
    let mut b = 80_877_102u32.to_be_bytes().to_vec();
    b.extend(4242u32.to_be_bytes());
    b.extend(std::iter::repeat_n(0xAB, key_len));
    untyped(&b)
}

// ---- frontend ----

/// A simple Query (`Q`).
pub fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', &z(sql))
}

/// A Parse (`P`) of statement `name` with parameter type OIDs `oids`.
pub fn parse(name: &str, sql: &str, oids: &[u32]) -> Vec<u8> {
    let mut b = z(name);
    b.extend(z(sql));
    b.extend((oids.len() as u16).to_be_bytes());
    for o in oids {
        b.extend(o.to_be_bytes());
    }
    msg(b'P', &b)
}

/// A Bind (`B`) of portal `portal` to statement `stmt`, parameters in text format.
pub fn bind(portal: &str, stmt: &str, params: &[&[u8]]) -> Vec<u8> {
    let mut b = z(portal);
    b.extend(z(stmt));
    b.extend(0u16.to_be_bytes()); // parameter formats: all text
    b.extend((params.len() as u16).to_be_bytes());
    for p in params {
        b.extend((p.len() as u32).to_be_bytes());
        b.extend_from_slice(p);
    }
    b.extend(0u16.to_be_bytes()); // result formats: all text
    msg(b'B', &b)
}

/// An Execute (`E`) of `portal`, at most `max_rows` rows (0: all).
pub fn execute(portal: &str, max_rows: u32) -> Vec<u8> {
    let mut b = z(portal);
    b.extend(max_rows.to_be_bytes());
    msg(b'E', &b)
}

/// A Describe (`D`) of a statement (`what` = `S`) or portal (`P`).
pub fn describe(what: u8, name: &str) -> Vec<u8> {
    let mut b = vec![what];
    b.extend(z(name));
    msg(b'D', &b)
}

/// A Close (`C`) of a statement (`what` = `S`) or portal (`P`).
pub fn close(what: u8, name: &str) -> Vec<u8> {
    let mut b = vec![what];
    b.extend(z(name));
    msg(b'C', &b)
}

/// A Sync (`S`).
pub fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

/// A Flush (`H`).
pub fn flush() -> Vec<u8> {
    msg(b'H', &[])
}

/// A Terminate (`X`).
pub fn terminate() -> Vec<u8> {
    msg(b'X', &[])
}

/// A FunctionCall (`F`) of function `oid` with one binary argument.
pub fn function_call(oid: u32, arg: &[u8]) -> Vec<u8> {
    let mut b = oid.to_be_bytes().to_vec();
    b.extend(1u16.to_be_bytes()); // one argument format code
    b.extend(1u16.to_be_bytes()); // binary
    b.extend(1u16.to_be_bytes()); // one argument
    b.extend((arg.len() as u32).to_be_bytes());
    b.extend_from_slice(arg);
    b.extend(1u16.to_be_bytes()); // binary result
    msg(b'F', &b)
}

/// A CopyData (`d`), either direction.
pub fn copy_data(data: &[u8]) -> Vec<u8> {
    msg(b'd', data)
}

/// A frontend CopyDone (`c`).
pub fn copy_done() -> Vec<u8> {
    msg(b'c', &[])
}

/// A CopyFail (`f`) with this message.
pub fn copy_fail(why: &str) -> Vec<u8> {
    msg(b'f', &z(why))
}

/// A PasswordMessage (`p`).
pub fn password(p: &str) -> Vec<u8> {
    msg(b'p', &z(p))
}

// ---- backend ----

/// An Authentication message (`R`) with this code (0: AuthenticationOk).
pub fn auth(code: u32) -> Vec<u8> {
    msg(b'R', &code.to_be_bytes())
}

/// AuthenticationOk.
pub fn auth_ok() -> Vec<u8> {
    auth(0)
}

/// A ParameterStatus (`S`).
pub fn param_status(k: &str, v: &str) -> Vec<u8> {
    let mut b = z(k);
    b.extend(z(v));
    msg(b'S', &b)
}

/// A BackendKeyData (`K`) with a 32-byte key (protocol 3.2).
pub fn key_data() -> Vec<u8> {
    let mut b = 4242u32.to_be_bytes().to_vec();
    b.extend([0xAB; 32]); // protocol 3.2: a 32-byte key
    msg(b'K', &b)
}

/// A ReadyForQuery (`Z`) with transaction status `I`, `T` or `E`.
pub fn ready(status: u8) -> Vec<u8> {
    msg(b'Z', &[status])
}

fn fields(sev: &str, code: &str, text: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    b.extend(z(sev));
    b.push(b'V');
    b.extend(z(sev));
    b.push(b'C');
    b.extend(z(code));
    b.push(b'M');
    b.extend(z(text));
    b.push(0);
    b
}

/// An ErrorResponse (`E`), severity ERROR, with this SQLSTATE.
pub fn error(code: &str) -> Vec<u8> {
    msg(b'E', &fields("ERROR", code, "something failed"))
}

/// An ErrorResponse (`E`), severity FATAL, with this SQLSTATE.
pub fn fatal(code: &str) -> Vec<u8> {
    msg(b'E', &fields("FATAL", code, "terminating connection"))
}

/// A NoticeResponse (`N`).
pub fn notice() -> Vec<u8> {
    msg(b'N', &fields("NOTICE", "00000", "just so you know"))
}

/// A NotificationResponse (`A`).
pub fn notification() -> Vec<u8> {
    let mut b = 77u32.to_be_bytes().to_vec();
    b.extend(z("chan"));
    b.extend(z("payload"));
    msg(b'A', &b)
}

/// A NegotiateProtocolVersion (`v`) offering 3.`minor`.
pub fn negotiate(minor: u32) -> Vec<u8> {
    let mut b = ((3u32 << 16) | minor).to_be_bytes().to_vec();
    b.extend(0u32.to_be_bytes());
    msg(b'v', &b)
}

/// A CommandComplete (`C`) with this tag, e.g. `"SELECT 1"`.
pub fn complete(tag: &str) -> Vec<u8> {
    msg(b'C', &z(tag))
}

/// An EmptyQueryResponse (`I`).
pub fn empty_query() -> Vec<u8> {
    msg(b'I', &[])
}

/// A ParseComplete (`1`).
pub fn parse_complete() -> Vec<u8> {
    msg(b'1', &[])
}

/// A BindComplete (`2`).
pub fn bind_complete() -> Vec<u8> {
    msg(b'2', &[])
}

/// A CloseComplete (`3`).
pub fn close_complete() -> Vec<u8> {
    msg(b'3', &[])
}

/// A ParameterDescription (`t`) of `n` int4 parameters.
pub fn param_desc(n: u16) -> Vec<u8> {
    let mut b = n.to_be_bytes().to_vec();
    for _ in 0..n {
        b.extend(23u32.to_be_bytes());
    }
    msg(b't', &b)
}

/// A RowDescription (`T`) of int4 columns with these names.
pub fn row_desc(cols: &[&str]) -> Vec<u8> {
    let mut b = (cols.len() as u16).to_be_bytes().to_vec();
    for c in cols {
        b.extend(z(c));
        b.extend(0u32.to_be_bytes()); // table oid
        b.extend(0u16.to_be_bytes()); // column number
        b.extend(23u32.to_be_bytes()); // type oid
        b.extend(4i16.to_be_bytes()); // type size
        b.extend((-1i32).to_be_bytes()); // modifier
        b.extend(0u16.to_be_bytes()); // format
    }
    msg(b'T', &b)
}

/// A NoData (`n`).
pub fn no_data() -> Vec<u8> {
    msg(b'n', &[])
}

/// A DataRow (`D`) with these values.
pub fn data_row(vals: &[&[u8]]) -> Vec<u8> {
    let mut b = (vals.len() as u16).to_be_bytes().to_vec();
    for v in vals {
        b.extend((v.len() as u32).to_be_bytes());
        b.extend_from_slice(v);
    }
    msg(b'D', &b)
}

/// A PortalSuspended (`s`).
pub fn suspended() -> Vec<u8> {
    msg(b's', &[])
}

fn copy_response(ty: u8, cols: u16) -> Vec<u8> {
    let mut b = vec![0u8];
    b.extend(cols.to_be_bytes());
    for _ in 0..cols {
        b.extend(0u16.to_be_bytes());
    }
    msg(ty, &b)
}

/// A CopyInResponse (`G`) of `cols` text columns.
pub fn copy_in(cols: u16) -> Vec<u8> {
    copy_response(b'G', cols)
}

/// A CopyOutResponse (`H`) of `cols` text columns.
pub fn copy_out(cols: u16) -> Vec<u8> {
    copy_response(b'H', cols)
}

/// A CopyBothResponse (`W`).
pub fn copy_both() -> Vec<u8> {
    copy_response(b'W', 0)
}

/// A backend CopyDone (`c`).
pub fn be_copy_done() -> Vec<u8> {
    msg(b'c', &[])
}

/// A FunctionCallResponse (`V`) with this value.
pub fn fn_response(val: &[u8]) -> Vec<u8> {
    let mut b = (val.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(val);
    msg(b'V', &b)
}

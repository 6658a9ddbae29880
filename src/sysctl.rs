//! `/proc/sys` access. Values under `net/` follow the calling thread's network
//! namespace, so container sysctls are written inside [`crate::netns::Netns::run`].

use anyhow::{Context, Result};

fn path(key: &str) -> String {
    // Accept both "net.ipv4.ip_forward" and "net/ipv4/ip_forward"; a dotted key's
    // interface part may itself contain dots only in the slash form.
    if key.contains('/') {
        format!("/proc/sys/{key}")
    } else {
        format!("/proc/sys/{}", key.replace('.', "/"))
    }
}

pub fn get(key: &str) -> Result<String> {
    let p = path(key);
    let s = std::fs::read_to_string(&p).with_context(|| format!("failed to read sysctl {p}"))?;
    Ok(s.trim().to_string())
}

pub fn set(key: &str, value: &str) -> Result<()> {
    let p = path(key);
    std::fs::write(&p, value).with_context(|| format!("failed to set sysctl {p} to {value}"))
}

/// Write only if different (forwarding switches are global and often already on).
pub fn ensure(key: &str, value: &str) -> Result<()> {
    if get(key).ok().as_deref() == Some(value) {
        return Ok(());
    }
    set(key, value)
}

/// The `/proc/sys` file of a network sysctl key given by a user (tuning's `sysctl` map),
/// with the reference's rules: every `.` becomes `/` (so a slash-form key cannot name an
/// interface with a dot in it; `IFNAME` can), then the first `IFNAME` becomes `ifname`.
///
/// Beyond the reference (which only cleans the joined path and checks its prefix), a key
/// with `..` or a leading `/` is refused outright rather than reinterpreted: what the
/// user meant is unclear, so guessing could write the wrong file. Errors are code 7 and
/// name the key.
pub fn net_key_path(key: &str, ifname: &str) -> Result<String> {
    use crate::error::{cni_err, Code};
    let bad = |why: &str| {
        cni_err(
            Code::InvalidConfig,
            format!("invalid sysctl key {key:?}: {why}"),
        )
    };
    if key.contains("..") {
        return Err(bad("\"..\" is not allowed"));
    }
    if key.starts_with('/') {
        return Err(bad(
            "absolute paths are not allowed (keys are relative to /proc/sys, e.g. net.ipv4.ip_forward)",
        ));
    }
    let slashed = key.replace('.', "/").replacen("IFNAME", ifname, 1);
    // Clean like Go's filepath.Join: empty components vanish. "." and ".." cannot occur:
    // every dot became a separator and the harness refuses "." and ".." as ifname.
    let parts: Vec<&str> = slashed.split('/').filter(|p| !p.is_empty()).collect();
    if parts.len() < 2 || parts[0] != "net" || parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(bad(
            "only network sysctls (net.*) of the container's namespace can be set",
        ));
    }
    Ok(format!("/proc/sys/{}", parts.join("/")))
}

/// Minimal regular expressions for sysctl allow-lists (`/etc/cni/tuning/allowlist.conf`
/// holds Go regexps, matched unanchored against sysctl keys).
///
/// This is the RE2 subset such lists use: literals and escapes, `.`, classes (`[a-z_]`,
/// `[^.]`, `\d \w \s` and their negations), groups (`(...)`, `(?:...)`), `|`, the
/// quantifiers `* + ? {n} {n,} {n,m}` (a trailing lazy `?` is accepted: it cannot change
/// whether something matches), and the assertions `^ $ \A \z \b \B`. Anything else
/// (flags, Unicode classes, POSIX classes, `\Q..\E`) is refused with an error instead
/// of being guessed at, so an allow-list we cannot read never lets a key through.
/// Matching is a Pike VM (no backtracking), linear in pattern size times key length.
pub mod pattern {
    use anyhow::{anyhow, bail, Result};

    /// Largest program we build (Go caps repeats at 1000; so do we).
    const MAX_INSTS: usize = 20_000;
    const MAX_REPEAT: u32 = 1000;

    #[derive(Clone, Debug)]
    enum Node {
        Empty,
        Char(char),
        Any,
        Class(Vec<(char, char)>, bool),
        Begin,
        End,
        WordBoundary(bool),
        Concat(Vec<Node>),
        Alt(Vec<Node>),
        Repeat(Box<Node>, u32, Option<u32>),
    }

    #[derive(Clone, Debug)]
    enum Inst {
        Char(char),
        Any,
        Class(Vec<(char, char)>, bool),
        Begin,
        End,
        WordBoundary(bool),
        Split(usize, usize),
        Jmp(usize),
        Match,
    }

    /// A compiled pattern.
    #[derive(Clone, Debug)]
    pub struct Pattern {
        source: String,
        prog: Vec<Inst>,
    }

    struct Parser<'a> {
        src: &'a str,
        chars: Vec<char>,
        pos: usize,
    }

    fn perl_class(c: char) -> Option<(Vec<(char, char)>, bool)> {
        let digit = vec![('0', '9')];
        let word = vec![('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')];
        let space = vec![('\t', '\n'), ('\x0c', '\r'), (' ', ' ')];
        Some(match c {
            'd' => (digit, false),
            'D' => (digit, true),
            'w' => (word, false),
            'W' => (word, true),
            's' => (space, false),
            'S' => (space, true),
            _ => return None,
        })
    }

    /// The complement of sorted ranges (for `\D` etc. inside a class).
    fn negate(r: &[(char, char)]) -> Vec<(char, char)> {
        let mut out = Vec::new();
        let mut next = '\0';
        let mut done = false;
        for &(lo, hi) in r {
            if lo > next {
                if let Some(p) = char::from_u32(lo as u32 - 1) {
                    out.push((next, p));
                }
            }
            match char::from_u32(hi as u32 + 1) {
                Some(n) => next = n,
                None => {
                    done = true;
                    break;
                }
            }
        }
        if !done {
            out.push((next, char::MAX));
        }
        out
    }

    impl Parser<'_> {
        fn err(&self, why: &str) -> anyhow::Error {
            anyhow!("invalid allow-list pattern {:?}: {why}", self.src)
        }

        fn peek(&self) -> Option<char> {
            self.chars.get(self.pos).copied()
        }

        fn next(&mut self) -> Option<char> {
            let c = self.peek();
            self.pos += 1;
            c
        }

        fn alt(&mut self, depth: usize) -> Result<Node> {
            if depth > 100 {
                return Err(self.err("groups nested too deeply"));
            }
            let mut alts = vec![self.concat(depth)?];
            while self.peek() == Some('|') {
                self.pos += 1;
                alts.push(self.concat(depth)?);
            }
            Ok(if alts.len() == 1 {
                alts.remove(0)
            } else {
                Node::Alt(alts)
            })
        }

        fn concat(&mut self, depth: usize) -> Result<Node> {
            let mut items = Vec::new();
            while let Some(c) = self.peek() {
                if c == '|' || c == ')' {
                    break;
                }
                let atom = self.atom(depth)?;
                items.push(self.quantified(atom)?);
            }
            Ok(match items.len() {
                0 => Node::Empty,
                1 => items.remove(0),
                _ => Node::Concat(items),
            })
        }

        /// `{n}`, `{n,}`, `{n,m}` at the cursor (which is on `{`), or None if this `{`
        /// is a literal (Go's rule).
        fn counted(&mut self) -> Result<Option<(u32, Option<u32>)>> {
            let rest: String = self.chars[self.pos..].iter().collect();
            let Some(end) = rest.find('}') else {
                return Ok(None);
            };
            let body = &rest[1..end];
            let num = |s: &str| -> Option<u32> {
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                s.parse().ok()
            };
            let (lo, hi) = match body.split_once(',') {
                None => match num(body) {
                    Some(n) => (n, Some(n)),
                    None => return Ok(None),
                },
                Some((a, "")) => match num(a) {
                    Some(n) => (n, None),
                    None => return Ok(None),
                },
                Some((a, b)) => match (num(a), num(b)) {
                    (Some(x), Some(y)) => (x, Some(y)),
                    _ => return Ok(None),
                },
            };
            if lo > MAX_REPEAT || hi.is_some_and(|h| h > MAX_REPEAT || h < lo) {
                return Err(self.err("invalid repeat count"));
            }
            self.pos += body.chars().count() + 2;
            Ok(Some((lo, hi)))
        }

        fn quantified(&mut self, atom: Node) -> Result<Node> {
            let (lo, hi) = match self.peek() {
                Some('*') => {
                    self.pos += 1;
                    (0, None)
                }
                Some('+') => {
                    self.pos += 1;
                    (1, None)
                }
                Some('?') => {
                    self.pos += 1;
                    (0, Some(1))
                }
                Some('{') => match self.counted()? {
                    Some(r) => r,
                    None => return Ok(atom),
                },
                _ => return Ok(atom),
            };
            if self.peek() == Some('?') {
                self.pos += 1; // lazy: same set of matches
            }
            if matches!(self.peek(), Some('*' | '+' | '?')) {
                return Err(self.err("invalid nested repetition operator"));
            }
            Ok(Node::Repeat(Box::new(atom), lo, hi))
        }

        fn escape(&mut self, in_class: bool) -> Result<Node> {
            let Some(c) = self.next() else {
                return Err(self.err("trailing backslash"));
            };
            if let Some((r, neg)) = perl_class(c) {
                return Ok(Node::Class(r, neg));
            }
            Ok(match c {
                'n' => Node::Char('\n'),
                't' => Node::Char('\t'),
                'r' => Node::Char('\r'),
                'f' => Node::Char('\x0c'),
                'v' => Node::Char('\x0b'),
                'A' if !in_class => Node::Begin,
                'z' if !in_class => Node::End,
                'b' if !in_class => Node::WordBoundary(true),
                'B' if !in_class => Node::WordBoundary(false),
                c if c.is_ascii_punctuation() => Node::Char(c),
                _ => return Err(self.err(&format!("unsupported escape \\{c}"))),
            })
        }

        fn class(&mut self) -> Result<Node> {
            let negated = self.peek() == Some('^');
            if negated {
                self.pos += 1;
            }
            let mut ranges: Vec<(char, char)> = Vec::new();
            let mut first = true;
            loop {
                let Some(c) = self.next() else {
                    return Err(self.err("missing closing ]"));
                };
                if c == ']' && !first {
                    break;
                }
                first = false;
                if c == '[' && self.peek() == Some(':') {
                    return Err(self.err("POSIX classes are not supported"));
                }
                let lo = if c == '\\' {
                    match self.escape(true)? {
                        Node::Char(x) => x,
                        Node::Class(r, neg) => {
                            ranges.extend(if neg { negate(&r) } else { r });
                            continue;
                        }
                        _ => return Err(self.err("bad escape in class")),
                    }
                } else {
                    c
                };
                // A range, unless the '-' is the last thing before ']'.
                if self.peek() == Some('-') && self.chars.get(self.pos + 1) != Some(&']') {
                    self.pos += 1;
                    let hi = match self.next() {
                        Some('\\') => match self.escape(true)? {
                            Node::Char(x) => x,
                            _ => return Err(self.err("bad range in class")),
                        },
                        Some(x) => x,
                        None => return Err(self.err("missing closing ]")),
                    };
                    if hi < lo {
                        return Err(self.err("invalid character class range"));
                    }
                    ranges.push((lo, hi));
                } else {
                    ranges.push((lo, lo));
                }
            }
            ranges.sort();
            Ok(Node::Class(ranges, negated))
        }

        fn atom(&mut self, depth: usize) -> Result<Node> {
            let Some(c) = self.next() else {
                return Err(self.err("unexpected end"));
            };
            Ok(match c {
                '(' => {
                    if self.peek() == Some('?') {
                        if self.chars.get(self.pos + 1) == Some(&':') {
                            self.pos += 2;
                        } else {
                            return Err(self.err("flags and named groups are not supported"));
                        }
                    }
                    let inner = self.alt(depth + 1)?;
                    if self.next() != Some(')') {
                        return Err(self.err("missing closing )"));
                    }
                    inner
                }
                '[' => self.class()?,
                '.' => Node::Any,
                '^' => Node::Begin,
                '$' => Node::End,
                '\\' => self.escape(false)?,
                '*' | '+' | '?' => return Err(self.err("missing argument to repetition operator")),
                c => Node::Char(c),
            })
        }
    }

    fn emit(n: &Node, prog: &mut Vec<Inst>) -> Result<()> {
        if prog.len() > MAX_INSTS {
            bail!("pattern too large");
        }
        match n {
            Node::Empty => {}
            Node::Char(c) => prog.push(Inst::Char(*c)),
            Node::Any => prog.push(Inst::Any),
            Node::Class(r, neg) => prog.push(Inst::Class(r.clone(), *neg)),
            Node::Begin => prog.push(Inst::Begin),
            Node::End => prog.push(Inst::End),
            Node::WordBoundary(b) => prog.push(Inst::WordBoundary(*b)),
            Node::Concat(v) => {
                for x in v {
                    emit(x, prog)?;
                }
            }
            Node::Alt(v) => {
                // split L1, next; L1: a; jmp end; next: split L2, ... ; last alternative
                let mut jumps = Vec::new();
                for (i, x) in v.iter().enumerate() {
                    if i + 1 < v.len() {
                        let split = prog.len();
                        prog.push(Inst::Split(split + 1, 0));
                        emit(x, prog)?;
                        jumps.push(prog.len());
                        prog.push(Inst::Jmp(0));
                        let here = prog.len();
                        prog[split] = Inst::Split(split + 1, here);
                    } else {
                        emit(x, prog)?;
                    }
                }
                let end = prog.len();
                for j in jumps {
                    prog[j] = Inst::Jmp(end);
                }
            }
            Node::Repeat(x, lo, hi) => {
                for _ in 0..*lo {
                    emit(x, prog)?;
                }
                match hi {
                    None => {
                        let split = prog.len();
                        prog.push(Inst::Split(split + 1, 0));
                        emit(x, prog)?;
                        prog.push(Inst::Jmp(split));
                        let end = prog.len();
                        prog[split] = Inst::Split(split + 1, end);
                    }
                    Some(hi) => {
                        let mut splits = Vec::new();
                        for _ in *lo..*hi {
                            splits.push(prog.len());
                            prog.push(Inst::Split(0, 0));
                            emit(x, prog)?;
                        }
                        let end = prog.len();
                        for s in splits {
                            prog[s] = Inst::Split(s + 1, end);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn is_word(c: Option<char>) -> bool {
        c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    }

    impl Pattern {
        pub fn new(src: &str) -> Result<Pattern> {
            let mut p = Parser {
                src,
                chars: src.chars().collect(),
                pos: 0,
            };
            let node = p.alt(0)?;
            if p.pos < p.chars.len() {
                return Err(p.err("unexpected )"));
            }
            let mut prog = Vec::new();
            emit(&node, &mut prog).map_err(|e| p.err(&e.to_string()))?;
            prog.push(Inst::Match);
            Ok(Pattern {
                source: src.to_string(),
                prog,
            })
        }

        pub fn as_str(&self) -> &str {
            &self.source
        }

        /// Does the pattern match anywhere in `text` (Go's `MatchString`)?
        pub fn is_match(&self, text: &str) -> bool {
            let chars: Vec<char> = text.chars().collect();
            let n = self.prog.len();
            let mut clist: Vec<usize> = Vec::new();
            let mut nlist: Vec<usize> = Vec::new();
            let mut seen = vec![usize::MAX; n];
            for pos in 0..=chars.len() {
                // Unanchored: a new thread starts at every position.
                if self.add(&mut clist, &mut seen, 0, pos, &chars) {
                    return true;
                }
                let c = chars.get(pos).copied();
                for &pc in &clist {
                    let ok = match (&self.prog[pc], c) {
                        (Inst::Char(x), Some(c)) => *x == c,
                        (Inst::Any, Some(c)) => c != '\n',
                        (Inst::Class(r, neg), Some(c)) => {
                            r.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *neg
                        }
                        _ => false,
                    };
                    if ok && self.add(&mut nlist, &mut seen, pc + 1, pos + 1, &chars) {
                        return true;
                    }
                }
                std::mem::swap(&mut clist, &mut nlist);
                nlist.clear();
            }
            false
        }

        /// Follow empty transitions from `pc` at `pos`; true if Match is reachable.
        fn add(
            &self,
            list: &mut Vec<usize>,
            seen: &mut [usize],
            pc: usize,
            pos: usize,
            chars: &[char],
        ) -> bool {
            let mut stack = vec![pc];
            while let Some(pc) = stack.pop() {
                if seen[pc] == pos {
                    continue;
                }
                seen[pc] = pos;
                match &self.prog[pc] {
                    Inst::Match => return true,
                    Inst::Jmp(t) => stack.push(*t),
                    Inst::Split(a, b) => {
                        stack.push(*b);
                        stack.push(*a);
                    }
                    Inst::Begin => {
                        if pos == 0 {
                            stack.push(pc + 1)
                        }
                    }
                    Inst::End => {
                        if pos == chars.len() {
                            stack.push(pc + 1)
                        }
                    }
                    Inst::WordBoundary(want) => {
                        let prev = pos.checked_sub(1).and_then(|p| chars.get(p).copied());
                        let at = is_word(prev) != is_word(chars.get(pos).copied());
                        if at == *want {
                            stack.push(pc + 1)
                        }
                    }
                    _ => list.push(pc),
                }
            }
            false
        }
    }

    #[cfg(test)]
    mod tests {
        use super::Pattern;

        fn m(p: &str, t: &str) -> bool {
            Pattern::new(p).unwrap().is_match(t)
        }

        #[test]
        fn matches_like_go() {
            // Unanchored by default, as Go's MatchString.
            assert!(m("ipv4", "net.ipv4.ip_forward"));
            assert!(m(
                r"^net\.ipv4\.conf\.IFNAME\.[a-z_]*$",
                "net.ipv4.conf.IFNAME.rp_filter"
            ));
            assert!(!m(
                r"^net\.ipv4\.conf\.IFNAME\.[a-z_]*$",
                "net.ipv4.conf.IFNAME.rp_filter2"
            ));
            assert!(!m(r"^net\.ipv4\.ip_forward$", "net/ipv4/ip_forward"));
            assert!(m(r"net[./]ipv4[./]ip_forward", "net/ipv4/ip_forward"));
            assert!(m(r"^net\.(ipv4|ipv6)\.", "net.ipv6.x"));
            assert!(!m(r"^net\.(?:ipv4|ipv6)\.", "net.core.x"));
            assert!(m(r"^a{2,3}$", "aaa"));
            assert!(!m(r"^a{2,3}$", "aaaa"));
            assert!(m(r"^a{2,}$", "aaaa"));
            assert!(m(r"a{,2}", "a{,2}")); // not a repeat: literal, as in Go
            assert!(m(r"^\d+\w*\s?$", "12ab "));
            assert!(m(r"^[^.]+$", "abc"));
            assert!(!m(r"^[^.]+$", "a.c"));
            assert!(m(r"^[\d.]+$", "1.2"));
            assert!(m(r"^[a-]+$", "a-a"));
            assert!(m(r"\bipv4\b", "net.ipv4.x"));
            assert!(!m(r"\bipv\b", "net.ipv4.x"));
            assert!(m(r"^(a*)*$", "aaa"));
            assert!(m(r"^$", ""));
            assert!(m(r"", "anything"));
            assert!(m(r"^x|y$", "xz"));
            assert!(m(r"^.+?$", "ab"));
        }

        #[test]
        fn refuses_what_it_cannot_read() {
            for p in [
                "(?i)net",
                "\\pL",
                "[[:alpha:]]",
                "a**",
                "*a",
                "(a",
                "a)",
                "[a",
                "\\",
                "a{2000}",
                "[z-a]",
                "\\Qa\\E",
            ] {
                assert!(Pattern::new(p).is_err(), "{p}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::net_key_path;

    #[test]
    fn net_keys_like_the_reference() {
        let p = |k: &str| net_key_path(k, "eth0.100").map_err(|e| e.to_string());
        assert_eq!(
            p("net.ipv4.ip_forward").unwrap(),
            "/proc/sys/net/ipv4/ip_forward"
        );
        assert_eq!(
            p("net/ipv4/ip_forward").unwrap(),
            "/proc/sys/net/ipv4/ip_forward"
        );
        assert_eq!(
            p("net.ipv4.conf.IFNAME.rp_filter").unwrap(),
            "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"
        );
        // Only the first IFNAME is replaced, after the dots (as in the reference).
        assert_eq!(
            p("net/IFNAME/IFNAME").unwrap(),
            "/proc/sys/net/eth0.100/IFNAME"
        );
        assert_eq!(
            p("net.ipv4.conf.a.b").unwrap(),
            "/proc/sys/net/ipv4/conf/a/b"
        );
        for bad in [
            "net/../kernel/x",
            "net..ipv4",
            "/proc/sys/net/ipv4/ip_forward",
            "/net/ipv4/ip_forward",
            "kernel.hostname",
            "net",
            "netfoo.x",
            "IFNAME.x",
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }
}

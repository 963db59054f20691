//! Remote commands as data. Every command the control plane runs on a golden VM is
//! built here by pure functions from validated values, and every argument is quoted
//! for the remote shell when it is sent; no shell line is ever assembled from input.

use serde::Serialize;

/// A program and its arguments, to be run on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteCommand {
    pub program: String,
    pub args: Vec<String>,
}

impl RemoteCommand {
    pub fn new(program: impl Into<String>, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self { program: program.into(), args: args.into_iter().map(Into::into).collect() }
    }

    /// `sh -c SCRIPT sh ARGS...`: a fixed script, with the data in positional arguments.
    pub fn script(script: &str, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let mut all = vec!["-c".to_owned(), script.to_owned(), "sh".to_owned()];
        all.extend(args.into_iter().map(Into::into));
        Self { program: "sh".into(), args: all }
    }

    /// The same command, ended on the host after `secs` seconds (coreutils `timeout`
    /// signals the command's whole process group, TERM then KILL 5 s later), so a command
    /// the control plane gave up on does not run on.
    pub fn with_deadline(&self, secs: u64) -> Self {
        let mut args = vec!["-k".to_owned(), "5".to_owned(), secs.max(1).to_string(), self.program.clone()];
        args.extend(self.args.iter().cloned());
        Self { program: "timeout".into(), args }
    }

    /// Exit statuses with which `timeout` reports that it ended the command.
    pub const DEADLINE_STATUSES: [i32; 2] = [124, 137];

    /// The line sshd hands to the remote user's shell: every word single-quoted.
    pub fn shell_line(&self) -> String {
        std::iter::once(&self.program).chain(&self.args).map(|w| quote(w)).collect::<Vec<_>>().join(" ")
    }
}

impl std::fmt::Display for RemoteCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shell_line())
    }
}

/// POSIX single-quoting: the result is one literal word for any input.
pub fn quote(word: &str) -> String {
    let safe = !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b));
    if safe {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_is_literal() {
        let cases = [
            ("plain", "plain"),
            ("", "''"),
            ("a b", "'a b'"),
            ("it's", "'it'\\''s'"),
            ("$(rm -rf /)", "'$(rm -rf /)'"),
            ("`x`;y|z&", "'`x`;y|z&'"),
            ("a\nb", "'a\nb'"),
        ];
        for (input, want) in cases {
            assert_eq!(quote(input), want);
        }
    }

    #[test]
    fn quoted_words_survive_a_real_shell() {
        let nasty = ["a b", "it's \"quoted\"", "$(touch /tmp/pwned)", "`id`", "x;y", "\\n", "*", "-rf"];
        let cmd = RemoteCommand::new("printf", std::iter::once("%s\\0").chain(nasty));
        let out = std::process::Command::new("sh").arg("-c").arg(cmd.shell_line()).output().unwrap();
        let words: Vec<_> = out
            .stdout
            .split(|&b| b == 0)
            .filter(|w| !w.is_empty())
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        assert_eq!(words, nasty);
    }

    #[test]
    fn a_command_past_its_deadline_is_ended_with_its_children() {
        let cmd = RemoteCommand::script("sleep 30 & sleep 30; echo done", Vec::<String>::new()).with_deadline(1);
        let started = std::time::Instant::now();
        let out = std::process::Command::new("sh").arg("-c").arg(cmd.shell_line()).output().unwrap();
        assert!(RemoteCommand::DEADLINE_STATUSES.contains(&out.status.code().unwrap()), "{out:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert!(!String::from_utf8_lossy(&out.stdout).contains("done"));
    }

    #[test]
    fn scripts_keep_data_out_of_the_script() {
        let cmd = RemoteCommand::script("printf %s \"$1\"", ["'; echo pwned; '"]);
        assert_eq!(cmd.args[..3], ["-c", "printf %s \"$1\"", "sh"]);
        let out = std::process::Command::new("sh").arg("-c").arg(cmd.shell_line()).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "'; echo pwned; '");
    }
}

//! Undoing a failed ADD, and running DEL's independent teardown steps so that every
//! one runs and every failure is reported.

use anyhow::Result;

/// Undo steps for a failed ADD, run newest first. Each step is best effort: a failure
/// is reported on stderr and the remaining steps still run, so a failed ADD leaves as
/// little behind as possible.
#[derive(Default)]
pub struct Rollback<'a> {
    steps: Vec<(String, UndoStep<'a>)>,
}

type UndoStep<'a> = Box<dyn FnOnce() -> Result<()> + 'a>;

impl<'a> Rollback<'a> {
    pub fn push(&mut self, what: impl Into<String>, step: impl FnOnce() -> Result<()> + 'a) {
        self.steps.push((what.into(), Box::new(step)));
    }

    pub fn run(self) {
        for (what, step) in self.steps.into_iter().rev() {
            if let Err(e) = step() {
                eprintln!("rollback: {what}: {e:#}");
            }
        }
    }

    /// Forget the steps: ADD succeeded.
    pub fn commit(self) {}

    /// Run `steps` as one transaction: every undo step they register runs (newest
    /// first) if they fail, and none runs if they succeed.
    pub fn guard<T>(steps: impl FnOnce(&mut Rollback<'a>) -> Result<T>) -> Result<T> {
        let mut undo = Rollback::default();
        match steps(&mut undo) {
            Ok(v) => {
                undo.commit();
                Ok(v)
            }
            Err(e) => {
                undo.run();
                Err(e)
            }
        }
    }
}

/// Run two independent teardown steps at once. Deleting a veth and committing an
/// nf_tables deletion each make the kernel wait an RCU grace period (10-20 ms); run
/// side by side the waits overlap. Neither step switches namespaces (sockets are
/// already bound), so a second thread is safe here.
pub fn both<A, B>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B)
where
    A: Send,
    B: Send,
{
    std::thread::scope(|s| {
        let hb = s.spawn(b);
        let ra = a();
        // With panic=abort a panicking thread ends the process; join cannot fail.
        let rb = match hb.join() {
            Ok(r) => r,
            Err(_) => std::process::abort(),
        };
        (ra, rb)
    })
}

/// Best-effort teardown: every step has already run; report every failure, not just
/// the first, so an operator sees all that is left. One failure keeps its own error
/// (and code); several are joined under the code of the first that has one.
pub fn all_errors(steps: impl IntoIterator<Item = Result<()>>) -> Result<()> {
    let mut errs: Vec<anyhow::Error> = steps.into_iter().filter_map(|r| r.err()).collect();
    match errs.len() {
        0 => Ok(()),
        1 => Err(errs.remove(0)),
        _ => {
            use crate::error::{CniError, Code};
            let coded: Vec<CniError> = errs.iter().map(CniError::from_anyhow).collect();
            let code = coded
                .iter()
                .map(|c| c.code)
                .find(|&c| c != Code::Internal as u32)
                .unwrap_or(Code::Internal as u32);
            let msg = coded
                .iter()
                .map(|c| c.msg.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            Err(anyhow::Error::new(CniError {
                code,
                msg,
                ..CniError::new(Code::Internal, "")
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{cni_err, CniError, Code};

    #[test]
    fn all_errors_keeps_every_failure() {
        all_errors([Ok(()), Ok(())]).unwrap();
        let one = all_errors([Ok(()), Err(cni_err(Code::Io, "disk"))]).unwrap_err();
        assert_eq!(CniError::from_anyhow(&one).code, 5);
        let two = all_errors([
            Err(anyhow::anyhow!("veth busy")),
            Ok(()),
            Err(cni_err(Code::TryAgainLater, "lock held")),
        ])
        .unwrap_err();
        let c = CniError::from_anyhow(&two);
        assert_eq!(c.code, 11, "the first coded failure gives the code");
        assert_eq!(c.msg, "veth busy; lock held");
    }

    #[test]
    fn guard_undoes_newest_first_only_on_failure() {
        let log = std::cell::RefCell::new(Vec::new());
        let r: Result<()> = Rollback::guard(|undo| {
            undo.push("a", || {
                log.borrow_mut().push("a");
                Ok(())
            });
            undo.push("b", || {
                log.borrow_mut().push("b");
                anyhow::bail!("b fails")
            });
            undo.push("c", || {
                log.borrow_mut().push("c");
                Ok(())
            });
            anyhow::bail!("step failed")
        });
        assert!(r.is_err());
        // Every step ran, newest first, despite b's failure.
        assert_eq!(*log.borrow(), vec!["c", "b", "a"]);
        log.borrow_mut().clear();
        Rollback::guard(|undo| {
            undo.push("x", || {
                log.borrow_mut().push("x");
                Ok(())
            });
            Ok(())
        })
        .unwrap();
        assert!(log.borrow().is_empty());
    }
}

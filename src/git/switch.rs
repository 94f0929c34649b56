//! The branch switch of a run that started on `develop` or `main` (Git Flow: runs are recorded
//! on a new feature branch), made so that a kill at any point leaves no empty feature branch.
//!
//! Creating a branch, switching to it and committing on it are three steps Git cannot make
//! atomic. So the switch is journalled: before the first ref moves, a journal in the work
//! tree's git dir (next to exp's work-tree lock) names the branch, where it starts and where
//! the run came from; it is removed once the run commit exists or the switch was undone. The
//! journal only exists while its writer holds the work-tree lock, so the next command that
//! takes the lock and finds one knows its writer died, and [`recover_interrupted_switch`]
//! finishes the undo: back to the branch the run started from, the empty branch deleted. A
//! branch that holds a commit is never deleted.

use std::path::PathBuf;

use git2::Repository;

use super::{git, workdir, BranchPlan, GitError};

/// The journal, relative to the work tree's git dir.
const JOURNAL_FILE: &str = "exp/switch.toml";

/// What a switch in progress has done or is about to do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Journal {
    /// The experiment being run.
    experiment: String,
    /// The branch the run started on.
    from: String,
    /// The feature branch being created.
    branch: String,
    /// The commit the feature branch starts at (develop's tip, or main's).
    start: String,
    /// Whether `develop` is being created too (from `main`).
    created_develop: bool,
}

fn journal_path(repo: &Repository) -> PathBuf {
    repo.path().join(JOURNAL_FILE)
}

impl Journal {
    /// Written durably, before the first ref moves.
    fn write(&self, repo: &Repository) -> Result<(), GitError> {
        super::write_journal(&journal_path(repo), self)
    }

    fn read(repo: &Repository) -> Option<Journal> {
        super::read_journal(&journal_path(repo))
    }

    fn remove(repo: &Repository) {
        let _ = std::fs::remove_file(journal_path(repo));
    }
}

/// The commit `branch` points at, as hex; `None` when there is no such branch.
fn branch_tip(repo: &Repository, branch: &str) -> Option<String> {
    repo.find_branch(branch, git2::BranchType::Local)
        .ok()?
        .get()
        .target()
        .map(|oid| oid.to_string())
}

/// The branch HEAD names, when HEAD is symbolic.
fn head_branch(repo: &Repository) -> Option<String> {
    let head = repo.find_reference("HEAD").ok()?;
    head.symbolic_target()?
        .strip_prefix("refs/heads/")
        .map(str::to_string)
}

/// Carries out a [`BranchPlan::NewFeature`] after training: journals the switch, creates the
/// branches and switches, carrying uncommitted changes. Returns what to undo, or to complete,
/// once the commit is made or has failed.
pub fn switch_for_run(
    repo: &Repository,
    plan: &BranchPlan,
    experiment: &str,
) -> Result<Option<SwitchUndo>, GitError> {
    let BranchPlan::NewFeature {
        branch,
        from,
        create_develop,
    } = plan
    else {
        return Ok(None);
    };
    let base = if *create_develop { "main" } else { "develop" };
    let start = branch_tip(repo, base).ok_or_else(|| GitError::Command {
        command: format!("rev-parse {base}"),
        stderr: format!("{base} does not exist"),
    })?;
    let journal = Journal {
        experiment: experiment.to_string(),
        from: from.clone(),
        branch: branch.clone(),
        start,
        created_develop: *create_develop,
    };
    journal.write(repo)?;
    let undo = SwitchUndo { journal };
    let dir = workdir(repo);
    let switched = (|| {
        if *create_develop {
            git(dir, &["branch", "develop", "main"])?;
        }
        git(dir, &["switch", "--quiet", "-c", branch, "develop"]).map(|_| ())
    })();
    match switched {
        Ok(()) => Ok(Some(undo)),
        Err(e) => {
            undo.undo(repo);
            Err(e)
        }
    }
}

/// How to finish a branch switch once the commit that should follow it is made or has failed.
#[derive(Debug)]
#[must_use = "a switch is completed or undone, or its journal stays until the next command"]
pub struct SwitchUndo {
    journal: Journal,
}

impl SwitchUndo {
    /// The commit holds the run: the feature branch stays, the journal goes.
    pub fn complete(self, repo: &Repository) {
        Journal::remove(repo);
    }

    /// Switches back and deletes what was created, if it still holds no commit of its own.
    /// Best effort: the run already failed. The journal goes only once the work tree is back
    /// where it was, so that the next command finishes an undo this one could not.
    pub fn undo(self, repo: &Repository) {
        if undo_switch(repo, &self.journal).is_ok() {
            Journal::remove(repo);
        }
    }
}

/// Undoes what `journal` describes; `Ok` when nothing of it is left.
fn undo_switch(repo: &Repository, journal: &Journal) -> Result<(), GitError> {
    let dir = workdir(repo);
    let unchanged = |branch: &str| branch_tip(repo, branch).as_deref() == Some(&journal.start);
    if head_branch(repo).as_deref() == Some(&journal.branch) {
        // A git killed in the switch leaves its index lock: named as such (Git's own lock
        // files are never guessed about), not as a failed switch.
        super::check_no_lock(&repo.path().join("index.lock"))?;
        git(dir, &["switch", "--quiet", &journal.from])?;
    }
    if unchanged(&journal.branch) {
        git(dir, &["branch", "-D", &journal.branch])?;
    }
    if journal.created_develop
        && unchanged("develop")
        && head_branch(repo).as_deref() != Some("develop")
    {
        git(dir, &["branch", "-D", "develop"])?;
    }
    Ok(())
}

/// What [`recover_interrupted_switch`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterruptedSwitch {
    /// The experiment whose run was interrupted.
    pub experiment: String,
    /// The feature branch it was creating.
    pub branch: String,
    /// The branch it started on.
    pub from: String,
    /// Whether the branch holds the run (the kill came after the commit): it was kept.
    pub kept: bool,
    /// Whether the branch the run started on no longer exists: nothing was switched.
    pub start_gone: bool,
}

/// Finishes the switch of a run that died between creating its feature branch and committing
/// on it (its journal is still there; the caller holds the work-tree lock, so its writer is
/// gone). Call it after the dead run's outputs were put back, so that the switch back carries
/// only the user's own changes. A branch that holds a commit is the run: kept, as is the
/// checkout. Returns what it found; `None` when no switch was interrupted.
pub fn recover_interrupted_switch(
    repo: &Repository,
) -> Result<Option<InterruptedSwitch>, GitError> {
    // No journal, or an unreadable one (removed): nothing had moved.
    let Some(journal) = Journal::read(repo) else {
        return Ok(None);
    };
    let kept = branch_tip(repo, &journal.branch).is_some_and(|tip| tip != journal.start);
    let start_gone = branch_tip(repo, &journal.from).is_none();
    if !kept && !start_gone {
        undo_switch(repo, &journal).map_err(|source| GitError::SwitchRecovery {
            journal: journal_path(repo),
            branch: journal.branch.clone(),
            source: Box::new(source),
        })?;
    }
    Journal::remove(repo);
    Ok(Some(InterruptedSwitch {
        experiment: journal.experiment,
        branch: journal.branch,
        from: journal.from,
        kept,
        start_gone,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository with `develop` at one commit, as `exp init` leaves it.
    fn repo_on_develop(dir: &std::path::Path) -> Repository {
        let run = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(args)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@example.com")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@example.com")
                .output()
                .unwrap();
            assert!(out.status.success(), "{args:?}: {out:?}");
        };
        run(&["init", "-q", "-b", "main"]);
        run(&["commit", "-q", "--allow-empty", "-m", "init"]);
        run(&["switch", "-q", "-c", "develop"]);
        Repository::open(dir).unwrap()
    }

    fn plan(branch: &str) -> BranchPlan {
        BranchPlan::NewFeature {
            branch: branch.into(),
            from: "develop".into(),
            create_develop: false,
        }
    }

    #[test]
    fn an_interrupted_switch_is_undone_and_a_branch_with_a_commit_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo_on_develop(dir.path());
        assert_eq!(recover_interrupted_switch(&repo).unwrap(), None);

        // Killed after the switch: the undo is finished by the next command.
        let undo = switch_for_run(&repo, &plan("feature/a-1"), "a")
            .unwrap()
            .unwrap();
        std::mem::forget(undo);
        assert_eq!(head_branch(&repo).as_deref(), Some("feature/a-1"));
        let found = recover_interrupted_switch(&repo).unwrap().unwrap();
        assert_eq!(
            found,
            InterruptedSwitch {
                experiment: "a".into(),
                branch: "feature/a-1".into(),
                from: "develop".into(),
                kept: false,
                start_gone: false,
            }
        );
        assert_eq!(head_branch(&repo).as_deref(), Some("develop"));
        assert!(branch_tip(&repo, "feature/a-1").is_none());
        assert!(!journal_path(&repo).exists());

        // Killed after the commit, before the journal went: the branch is the run, kept.
        let undo = switch_for_run(&repo, &plan("feature/a-2"), "a")
            .unwrap()
            .unwrap();
        std::mem::forget(undo);
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let head = repo.head().unwrap().peel_to_commit().unwrap();
        repo.commit(
            Some("HEAD"),
            &sig,
            &sig,
            "run",
            &head.tree().unwrap(),
            &[&head],
        )
        .unwrap();
        let found = recover_interrupted_switch(&repo).unwrap().unwrap();
        assert!(found.kept);
        assert_eq!(head_branch(&repo).as_deref(), Some("feature/a-2"));
        assert!(!journal_path(&repo).exists());

        // The branch it started from is gone: nothing is switched, the journal goes.
        repo.set_head("refs/heads/develop").unwrap();
        let gone = BranchPlan::NewFeature {
            branch: "feature/a-4".into(),
            from: "gone".into(),
            create_develop: false,
        };
        std::mem::forget(switch_for_run(&repo, &gone, "a").unwrap().unwrap());
        let found = recover_interrupted_switch(&repo).unwrap().unwrap();
        assert!(found.start_gone && !found.kept);
        assert_eq!(head_branch(&repo).as_deref(), Some("feature/a-4"));
        assert!(!journal_path(&repo).exists());

        // Completed: no journal, nothing for the next command to do.
        repo.set_head("refs/heads/develop").unwrap();
        let undo = switch_for_run(&repo, &plan("feature/a-3"), "a")
            .unwrap()
            .unwrap();
        undo.complete(&repo);
        assert_eq!(recover_interrupted_switch(&repo).unwrap(), None);
        assert_eq!(head_branch(&repo).as_deref(), Some("feature/a-3"));
    }
}

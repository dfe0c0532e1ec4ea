//! Real faults, not mocks: the embedded database's disk filling up.

use std::{path::PathBuf, process::Command};

use tonic::Code;

use crate::helpers::{TestDatabase, spawn_app_on};

/// A 2 MiB tmpfs mounted for one test, unmounted when dropped. Mounting
/// needs root (the tests run as root in CI); elsewhere the test says so and
/// is skipped, except under `CI`, where that is a failure.
struct SmallDisk {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> Option<Self> {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("disk");
        std::fs::create_dir(&dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must be able to mount a tmpfs (run as root) for the disk-full test"
            );
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(Self {
            dir,
            _parent: parent,
        })
    }

    /// Fills the disk with a file; returns it, so it can be removed.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_that_cannot_be_written_is_refused_and_nothing_is_lost_once_space_returns() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let db = TestDatabase::sqlite_in(&disk.dir);
    let app = spawn_app_on(&db, |_| {}).await;
    app.add_user("alice", "pw", &["read"]).await;
    let bearer = app.introspector_token().await;
    let mut tokens = Vec::new();
    for _ in 0..8 {
        tokens.push(app.login("alice", "pw").await.unwrap().access_token);
    }

    let filler = disk.fill();
    let mut refused = 0;
    for token in &tokens {
        match app.revoke(token).await {
            Ok(()) => {}
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                refused += 1;
            }
        }
    }
    println!("{refused} of 8 revokes refused on a full disk");
    assert!(refused > 0, "every revoke answered OK on a full disk");

    // Space comes back: the same connections must write again, for real.
    std::fs::remove_file(filler).unwrap();
    for token in &tokens {
        app.revoke(token)
            .await
            .unwrap_or_else(|s| panic!("revoke after space returned: {s:?}"));
    }
    app.stop().await;

    // Every revoke that answered OK survives a restart.
    let after = spawn_app_on(&db, |_| {}).await;
    let bearer_after = after.introspector_token().await;
    for token in &tokens {
        assert!(
            !after
                .introspect_with(&bearer_after, token)
                .await
                .unwrap()
                .active,
            "a revoked token is active again after a restart"
        );
    }
    drop(bearer);
}

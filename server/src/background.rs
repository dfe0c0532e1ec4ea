//! Background tasks tied to the value that started them.

use tokio::task::JoinHandle;

/// Aborts its task when dropped, so an application (or a test's) leaves
/// nothing running behind it.
#[derive(Debug)]
pub(crate) struct Background(pub(crate) JoinHandle<()>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

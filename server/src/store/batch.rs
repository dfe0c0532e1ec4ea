//! Small writes sent together: writers queue their jobs, and one task at a
//! time sends every job waiting as one batch (one round trip, one commit),
//! then answers each writer with its own rows. A writer cancelled while
//! waiting cancels nobody else's write (its own may still happen, as if
//! its answer were lost).

use std::{future::Future, pin::Pin, sync::Arc};

use sqlx::any::AnyRow;
use tokio::sync::oneshot;

use super::StoreError;

/// What a batch returns: each job's rows, in the order of the jobs.
pub(super) type Rows = Vec<Vec<AnyRow>>;

/// Sends one batch of jobs.
pub(super) type SendBatch<J> = Box<
    dyn Fn(Vec<J>) -> Pin<Box<dyn Future<Output = Result<Rows, StoreError>> + Send>> + Send + Sync,
>;

/// A queue of jobs `J` and how to send a batch of them.
pub(super) struct Batcher<J>(Arc<Inner<J>>);

struct Inner<J> {
    queue: parking_lot::Mutex<Queue<J>>,
    send: SendBatch<J>,
    /// Jobs per batch at most (a batch of more takes the first ones).
    max: usize,
    /// Only batches of a power-of-two size, so a connection's statement
    /// cache holds few shapes of batch.
    powers_of_two: bool,
}

struct Queue<J> {
    jobs: Vec<(J, oneshot::Sender<Vec<AnyRow>>)>,
    /// A task is sending the queue's batches.
    leading: bool,
}

impl<J: Send + 'static> Batcher<J> {
    pub(super) fn new(send: SendBatch<J>, max: usize, powers_of_two: bool) -> Self {
        Self(Arc::new(Inner {
            queue: parking_lot::Mutex::new(Queue {
                jobs: Vec::new(),
                leading: false,
            }),
            send,
            max,
            powers_of_two,
        }))
    }

    /// Sends `job` with every other job waiting: its rows once committed,
    /// or `None` when nothing of its batch was written (the batch failed);
    /// the caller then writes its own way.
    pub(super) async fn submit(&self, job: J) -> Option<Vec<AnyRow>> {
        let (answer, answered) = oneshot::channel();
        let lead = {
            let mut queue = self.0.queue.lock();
            queue.jobs.push((job, answer));
            !std::mem::replace(&mut queue.leading, true)
        };
        if lead {
            let inner = Arc::clone(&self.0);
            tokio::spawn(async move { inner.lead().await });
        }
        answered.await.ok()
    }
}

impl<J> Inner<J> {
    /// Sends the queue's batches until it is empty.
    async fn lead(&self) {
        /// Gives up the lead if the task ends by a panic; jobs still queued
        /// are then answered `None` (their writers write their own way).
        struct Leading<'a, J> {
            queue: &'a parking_lot::Mutex<Queue<J>>,
            given_up: bool,
        }
        impl<J> Drop for Leading<'_, J> {
            fn drop(&mut self) {
                if !self.given_up {
                    let mut queue = self.queue.lock();
                    queue.leading = false;
                    queue.jobs.clear();
                }
            }
        }
        let mut leading = Leading {
            queue: &self.queue,
            given_up: false,
        };
        loop {
            let (jobs, answers): (Vec<J>, Vec<_>) = {
                let mut queue = self.queue.lock();
                if queue.jobs.is_empty() {
                    // Under the lock: a job queued after this leads.
                    queue.leading = false;
                    leading.given_up = true;
                    return;
                }
                let mut n = queue.jobs.len().min(self.max);
                if self.powers_of_two {
                    n = 1 << n.ilog2();
                }
                queue.jobs.drain(..n).unzip()
            };
            let writers = jobs.len();
            match (self.send)(jobs).await {
                Ok(mut rows) => {
                    for (writer, answer) in answers.into_iter().enumerate() {
                        let _ = answer
                            .send(rows.get_mut(writer).map(std::mem::take).unwrap_or_default());
                    }
                }
                // Dropping the answers says "not written".
                Err(e) => tracing::debug!(error = %e, writers, "a batch sent together failed"),
            }
        }
    }
}

/// A batch's rows split by job: each row names its job in a column
/// `writer` (its index in the batch).
pub(super) fn rows_by_writer(rows: Vec<AnyRow>, writers: usize) -> Result<Rows, StoreError> {
    use sqlx::Row;
    let mut by_writer: Rows = (0..writers).map(|_| Vec::new()).collect();
    for row in rows {
        let writer: i64 = row.try_get("writer")?;
        if let Some(rows) = usize::try_from(writer)
            .ok()
            .and_then(|w| by_writer.get_mut(w))
        {
            rows.push(row);
        }
    }
    Ok(by_writer)
}

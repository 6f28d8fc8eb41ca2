//! Matrix-vector products shared between the calling thread and rayon's idle workers, where the
//! calling thread never waits for a helper.
//!
//! One-token decode is a chain of products separated by small serial steps (norms, the WKV
//! recurrence). A fork-join per product makes every product wait for its slowest thread, and a
//! worker that shares its core with another process can be descheduled for milliseconds in the
//! middle of its share. In a [`with_team`] run the calling thread (the *lead*) runs the whole
//! token: for each product, or each group of independent products ([`Team::matvecs_into`]:
//! the threads then meet once for the group), it publishes the weights and the inputs, and
//! every participant (the lead and the *helpers*, rayon workers that joined the run) takes
//! row chunks of the outputs one at a time, first from its own segment of consecutive rows (so
//! each thread reads the weights as one stream), then from the others'. When no chunk is left
//! to take, the lead computes itself every chunk a helper took but has not finished and moves
//! on; a helper's late result is then discarded. The lead waits only for a helper that is
//! copying a finished chunk out (a few hundred nanoseconds), so a slow or absent helper costs
//! at most its unfinished chunk, never a scheduler time slice.
//!
//! Every shared value is an atomic or behind a mutex: the module has no `unsafe`.
//!
//! Protocol. Jobs (one product or a group) are numbered by an *epoch* `e`; a job's chunks are
//! numbered one after the other over its products. `seq` is `2e` while job `e` is published
//! and odd while the lead rewrites the job and the inputs (a sequence lock: a helper copies the
//! inputs, then checks that `seq` did not move). Each participant's `next` holds `e << 32 | k`:
//! chunk `k` is the next to take in its segment. Each chunk has a status word `epoch << 2 |
//! status`: a helper that finished chunk `c` of job `e` may claim it only while its word's
//! epoch is below `e` (`WRITING`), copies its rows into the shared output and marks it `DONE`;
//! the lead marks the chunks it computes `TAKEN`. After the lead's sweep every chunk of job `e`
//! is `DONE` or `TAKEN` with epoch `e`, so no helper still working on `e` can claim anything
//! afterwards.
//! Epochs keep growing from run to run (the buffers remember the last one).

use super::aligned;
use super::linear::Linear;
use super::matrix::Prepared;
use ndarray::{Array1, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis};
use std::ops::Range;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Output rows per chunk at least: the unit a thread takes.
pub const CHUNK_ROWS: usize = 16;

/// Output rows per chunk at most.
const MAX_CHUNK_ROWS: usize = 256;

/// Weight bytes a chunk reads, about (between [`CHUNK_ROWS`] and [`MAX_CHUNK_ROWS`] rows):
/// every chunk costs the threads a few atomic operations on shared cache lines, so a chunk
/// is sized by what it reads, not by its rows, and a 4-bit matrix gets chunks of more rows
/// than an f32 one.
const CHUNK_BYTES: usize = 64 << 10;

/// Rows per chunk of a product with `w`.
fn rows_per_chunk(w: &Linear) -> usize {
    let (out, _) = w.dim();
    let row_bytes = w.size_bytes() / out.max(1);
    (CHUNK_BYTES / row_bytes.max(1)).clamp(CHUNK_ROWS, MAX_CHUNK_ROWS)
}

/// Input rows (sequences) one product serves at most.
pub const MAX_ROWS: usize = super::linear::SMALL_BATCH;

const WRITING: u64 = 1;
const DONE: u64 = 2;
const TAKEN: u64 = 3;

/// `seq` once the run is over: helpers return.
const FINISHED: u64 = u64::MAX;

/// Spins of an idle helper before it starts yielding its core between checks.
const SPINS_BEFORE_YIELD: u32 = 1 << 14;

/// Buffers for [`with_team`], sized once for a model: kept in a state's workspace so a token
/// allocates nothing. Cloning gives fresh buffers of the same sizes (their contents only live
/// during one product).
pub struct TeamBuffers {
    /// The last product's epoch: epochs grow across runs, so a status word left by an
    /// earlier run is never taken for one of this run.
    epoch: u64,
    parts: Parts,
    timing: Timing,
}

/// What the lead and the helpers share in a run.
struct Parts {
    /// The published inputs, each product's `[rows, in]` after the other's, as f32 bits.
    x: Vec<AtomicU32>,
    /// The helpers' finished chunks, each product's `[out, rows]` after the other's, as f32
    /// bits.
    y: Vec<AtomicU32>,
    /// One status word per output chunk.
    chunks: Vec<AtomicU64>,
    /// Per participant (the lead, then each helper), `e << 32 | k`: the next chunk `k` of its
    /// segment of product `e`, each on a cache line of its own (a participant takes its
    /// chunks without moving the others' counters between cores).
    next: Vec<OwnLine>,
    /// One private scratch per helper.
    helpers: Vec<Mutex<HelperScratch>>,
    /// The lead's copy of the inputs, on a cache line like the helpers', and what the
    /// weights' storages made of them.
    lead: Mutex<LeadScratch>,
    sizes: TeamSizes,
}

/// An atomic alone on its cache line.
#[repr(align(64))]
struct OwnLine(AtomicU64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TeamSizes {
    max_in: usize,
    max_out: usize,
    rows: usize,
    helpers: usize,
}

struct HelperScratch {
    /// The helper's copy of the inputs, starting on a cache line (so that the
    /// kernels' loads of it do not straddle two).
    x: Array1<f32>,
    /// What each product's storage made of its inputs ([`Prepared`]), cleared per job.
    prepared: [Prepared; MAX_JOINT],
    /// One finished chunk, `[chunk rows, rows]` (at most [`MAX_CHUNK_ROWS`]).
    y: Vec<f32>,
}

struct LeadScratch {
    x: Array1<f32>,
    prepared: [Prepared; MAX_JOINT],
}

impl TeamBuffers {
    /// Buffers for products of at most `max_in` inputs and `max_out` outputs over at most
    /// `rows` input rows (at most [`MAX_ROWS`]), with one helper per rayon thread beyond the
    /// calling one (`rayon::current_num_threads() − 1`). Products published together
    /// ([`Team::matvecs_into`]) count their inputs and outputs together; a product or group
    /// larger than that runs on the calling thread alone.
    ///
    /// # Panics
    /// If `rows` is 0 or above [`MAX_ROWS`].
    pub fn new(max_in: usize, max_out: usize, rows: usize) -> TeamBuffers {
        assert!(
            (1..=MAX_ROWS).contains(&rows),
            "TeamBuffers: 1 to {MAX_ROWS} rows"
        );
        TeamBuffers::with_sizes(TeamSizes {
            max_in,
            max_out,
            rows,
            helpers: rayon::current_num_threads().saturating_sub(1),
        })
    }

    fn with_sizes(sizes: TeamSizes) -> TeamBuffers {
        let zeros32 = |n: usize| (0..n).map(|_| AtomicU32::new(0)).collect();
        let TeamSizes {
            max_in,
            max_out,
            rows,
            helpers,
        } = sizes;
        let parts = Parts {
            x: zeros32(max_in * rows),
            y: zeros32(max_out * rows),
            chunks: (0..max_out.div_ceil(CHUNK_ROWS) + MAX_JOINT)
                .map(|_| AtomicU64::new(0))
                .collect(),
            next: (0..=helpers).map(|_| OwnLine(AtomicU64::new(0))).collect(),
            helpers: (0..helpers)
                .map(|_| {
                    Mutex::new(HelperScratch {
                        x: aligned::zeros(max_in * rows),
                        prepared: Default::default(),
                        y: vec![0.0; MAX_CHUNK_ROWS * rows],
                    })
                })
                .collect(),
            lead: Mutex::new(LeadScratch {
                x: aligned::zeros(max_in * rows),
                prepared: Default::default(),
            }),
            sizes,
        };
        TeamBuffers {
            epoch: 0,
            parts,
            timing: Timing::default(),
        }
    }
}

impl Clone for TeamBuffers {
    fn clone(&self) -> Self {
        TeamBuffers::with_sizes(self.parts.sizes)
    }
}

impl std::fmt::Debug for TeamBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeamBuffers")
            .field("sizes", &self.parts.sizes)
            .finish_non_exhaustive()
    }
}

/// Where the products of a layer's recurrent path run.
pub struct Team<'t, 'w>(Crew<'t, 'w>);

enum Crew<'t, 'w> {
    /// On the calling thread alone.
    Serial,
    /// Through [`Linear::forward`]'s own split across rayon's threads.
    Pool,
    /// Shared with the helpers of a [`with_team`] run.
    Run(&'t Shared<'w>),
}

impl<'t, 'w> Team<'t, 'w> {
    /// Every product on the calling thread.
    pub fn serial() -> Team<'t, 'w> {
        Team(Crew::Serial)
    }

    /// Every product split across rayon's threads by a fork-join of its own
    /// ([`Linear::matvec_into`]).
    pub fn pool() -> Team<'t, 'w> {
        Team(Crew::Pool)
    }

    /// `yt = W xsᵀ`: row `j` of `xs` times the weight, written to column `j` of `yt`.
    ///
    /// # Shapes
    /// `xs: [B, in]`, `yt: [out, B]`.
    ///
    /// # Panics
    /// If the shapes do not match the weight, or `B` is above [`MAX_ROWS`].
    #[track_caller]
    pub fn product(&self, w: &'w Linear, xs: ArrayView2<f32>, yt: ArrayViewMut2<f32>) {
        let (out, inp) = w.dim();
        let b = xs.nrows();
        assert!(b <= MAX_ROWS, "Team::product: at most {MAX_ROWS} rows");
        assert_eq!(xs.ncols(), inp, "Team::product: input width");
        assert_eq!(yt.dim(), (out, b), "Team::product: output shape");
        match self.0 {
            Crew::Pool => w.streamed_into(xs, yt, true),
            Crew::Run(shared) if yt.is_standard_layout() => {
                let y = yt.into_slice().expect("standard layout");
                shared.run(&mut [Entry { w, xs, y }]);
            }
            _ => w.streamed_into(xs, yt, false),
        }
    }

    /// `y = W x` for each `(W, x, y)`: independent products that a team run publishes as one
    /// job, so that the threads meet once for all of them instead of once per product. The
    /// results are the bits [`Team::matvec_into`] gives for each.
    ///
    /// # Shapes
    /// `x: [in]`, `y: [out]` of each product's weight.
    ///
    /// # Panics
    /// If the shapes do not match the weights.
    #[track_caller]
    pub fn matvecs_into<const N: usize>(
        &self,
        products: [(&'w Linear, ArrayView1<f32>, ArrayViewMut1<f32>); N],
    ) {
        for (w, x, y) in &products {
            let (out, inp) = w.dim();
            assert_eq!(x.len(), inp, "Team::matvecs_into: input length");
            assert_eq!(y.len(), out, "Team::matvecs_into: output length");
        }
        let joint = products.iter().all(|(_, _, y)| y.is_standard_layout());
        if let (Crew::Run(shared), true) = (&self.0, joint) {
            let mut entries = products.map(|(w, x, y)| Entry {
                w,
                xs: x.insert_axis(Axis(0)),
                y: y.into_slice().expect("standard layout"),
            });
            return shared.run(&mut entries);
        }
        for (w, x, y) in products {
            self.matvec_into(w, x, y);
        }
    }

    /// `y = W x` ([`Team::product`] of one row).
    ///
    /// # Shapes
    /// `x: [in]`, `y: [out]`.
    ///
    /// # Panics
    /// If the shapes do not match the weight.
    #[track_caller]
    pub fn matvec_into(
        &self,
        w: &'w Linear,
        x: ndarray::ArrayView1<f32>,
        y: ndarray::ArrayViewMut1<f32>,
    ) {
        self.product(
            w,
            x.insert_axis(ndarray::Axis(0)),
            y.insert_axis(ndarray::Axis(1)),
        )
    }
}

/// Runs `f` as the lead of a team on the team's own threads ([`helper_pool`], not rayon's
/// global pool): one of them runs `f` while the calling thread waits, and up to `buffers`'
/// helper count of the others take row chunks of the products `f` sends through its
/// [`Team`]. A helper that starts late (its thread busy with another run) takes whatever
/// chunks are left, or none.
///
/// Without helper threads (rayon has one thread), `f` runs on the calling thread with
/// [`Team::serial`]. Unless `measured`, every run takes the helpers; if `measured`, a run
/// takes them only when they pay, which is measured: the buffers keep the average
/// wall time of runs with and without helpers, each run takes the faster way, and every
/// so often (after [`PROBE_EVERY`] runs, then at growing gaps while the probes confirm the
/// choice) a run takes the other way to keep its average current. (With another
/// process keeping a core busy, three threads share two cores and the lead loses a third of
/// its time: one thread alone can then be faster.) Both ways give the same bits, so `f`'s
/// runs should be alike (one token each, say) for the averages to mean something.
///
/// `'w` is the lifetime of the weights `f` multiplies by: a helper may still read a weight
/// after the lead has moved on (its result is then discarded), so they must outlive the run.
pub fn with_team<'w, R: Send>(
    buffers: &'w mut TeamBuffers,
    measured: bool,
    f: impl for<'t> FnOnce(&Team<'t, 'w>) -> R + Send,
) -> R {
    with_team_on(helper_pool(), buffers, measured, f)
}

/// [`with_team`] on the threads of `pool` (none: the calling thread alone).
fn with_team_on<'w, R: Send>(
    pool: Option<&rayon::ThreadPool>,
    buffers: &'w mut TeamBuffers,
    measured: bool,
    f: impl for<'t> FnOnce(&Team<'t, 'w>) -> R + Send,
) -> R {
    let TeamBuffers {
        epoch,
        parts,
        timing,
    } = buffers;
    let Some(pool) = pool else {
        return f(&Team(Crew::Serial));
    };
    let helpers = parts
        .helpers
        .len()
        .min(pool.current_num_threads().saturating_sub(1));
    if helpers == 0 {
        return f(&Team(Crew::Serial));
    }
    let with_helpers = !measured || timing.choose();
    let start = Instant::now();
    if !with_helpers {
        let r = f(&Team(Crew::Serial));
        timing.record(false, start.elapsed());
        return r;
    }
    let shared = Shared {
        buffers: parts,
        seq: AtomicU64::new(2 * *epoch),
        epoch: AtomicU64::new(*epoch),
        team_size: helpers + 1,
        job: Mutex::new(None),
    };
    // `install` and `join` keep their jobs on the stack: a token allocates nothing.
    let (r, ()) = pool.install(|| {
        rayon::join(
            || {
                // Set on unwind too, so that helpers never spin forever.
                let _finish = Finish(&shared.seq);
                f(&Team(Crew::Run(&shared)))
            },
            || start_helpers(&shared, &parts.helpers[..helpers], 1),
        )
    });
    *epoch = shared.epoch.load(Ordering::Relaxed);
    if measured {
        timing.record(true, start.elapsed());
    }
    r
}

/// The team's threads: a pool of their own, apart from rayon's global pool, so that a team run
/// never holds the workers other rayon work (a caller's `par_iter`, another model's prefill)
/// waits for. One of them leads a run while the calling thread sleeps, the others help. Built
/// at first use with as many threads as rayon's pool has then; `None` when that is one.
fn helper_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let threads = rayon::current_num_threads();
        (threads > 1)
            .then(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("tokenshift-team-{i}"))
                    .build()
                    .ok()
            })
            .flatten()
    })
    .as_ref()
}

/// Runs between [`with_team`]'s probes of the way it currently deems slower, at first and
/// after the choice changes; each probe that confirms the choice doubles the gap, up to
/// [`PROBE_EVERY_MAX`], so that probing the slower way costs a small share of the runs.
pub const PROBE_EVERY: u64 = 64;

/// The longest gap between probes: a change of load is noticed within this many runs.
pub const PROBE_EVERY_MAX: u64 = 512;

/// Average wall times of [`with_team`]'s runs with and without helpers.
#[derive(Clone, Copy, Debug)]
struct Timing {
    /// Seconds per run with helpers, without (0 until measured).
    with: f64,
    without: f64,
    runs: u64,
    /// The run that probes the slower way next, and the gap before it.
    next_probe: u64,
    gap: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            with: 0.0,
            without: 0.0,
            runs: 0,
            next_probe: PROBE_EVERY,
            gap: PROBE_EVERY,
        }
    }
}

/// Runs that alternate between the two ways before [`Timing`] picks one.
const FIRST_RUNS: u64 = 4;

impl Timing {
    /// Whether the next run takes helpers.
    fn choose(&mut self) -> bool {
        self.runs += 1;
        if self.runs <= FIRST_RUNS {
            return self.runs % 2 == 1;
        }
        let faster = self.with <= self.without;
        if self.runs == self.next_probe {
            !faster
        } else {
            faster
        }
    }

    /// Records a run. The first runs average each way's two times; after them, a run of the
    /// faster way moves its average halfway to its time (a change of load shows within a few
    /// runs), and a probe of the slower way replaces its average. A probe that confirms the
    /// choice doubles the gap to the next one; a change of choice brings it back to
    /// [`PROBE_EVERY`].
    fn record(&mut self, with_helpers: bool, took: Duration) {
        let t = took.as_secs_f64();
        let chosen = self.with <= self.without;
        let probe = with_helpers != chosen && self.runs > FIRST_RUNS;
        let avg = if with_helpers {
            &mut self.with
        } else {
            &mut self.without
        };
        *avg = if *avg == 0.0 || probe {
            t
        } else {
            0.5 * (*avg + t)
        };
        if self.runs < FIRST_RUNS {
            return;
        }
        let changed = chosen != (self.with <= self.without);
        if changed || self.runs == FIRST_RUNS {
            self.gap = PROBE_EVERY;
            self.next_probe = self.runs + PROBE_EVERY;
        } else if probe {
            self.gap = (2 * self.gap).min(PROBE_EVERY_MAX);
            self.next_probe = self.runs + self.gap;
        }
    }
}

struct Finish<'a>(&'a AtomicU64);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.0.store(FINISHED, Ordering::Release);
    }
}

/// Each slot's helper (participant `me`, the next ones after it) runs on the thread that
/// picks it up; the rest stay open to stealing.
/// Runs `slots.len()` helper loops side by side (helper numbers from `me` on), each a rayon
/// job of its own.
fn start_helpers(shared: &Shared<'_>, slots: &[Mutex<HelperScratch>], me: usize) {
    if let [first, rest @ ..] = slots {
        rayon::join(
            || shared.help(first, me),
            || start_helpers(shared, rest, me + 1),
        );
    }
}

/// The most products [`Team::matvecs_into`] publishes as one job; more run in turn.
pub const MAX_JOINT: usize = 8;

/// One product of a job as the lead holds it: the weight, the input rows and where the
/// results go (`[out, rows]`).
struct Entry<'a, 'w> {
    w: &'w Linear,
    xs: ArrayView2<'a, f32>,
    y: &'a mut [f32],
}

/// One product of the published job: its weight, and where its input, its results and its
/// chunks start in the shared buffers.
#[derive(Clone, Copy)]
struct Part<'w> {
    w: &'w Linear,
    out: usize,
    inp: usize,
    /// Offsets into the input `[Σ rows·in]`, the output `[Σ out·rows]` and the chunks.
    x_at: usize,
    y_at: usize,
    first_chunk: usize,
    /// Output rows per chunk.
    chunk_rows: usize,
}

/// The job being run: up to [`MAX_JOINT`] products over the same number of input rows, their
/// chunks numbered one after the other.
#[derive(Clone, Copy)]
struct Job<'w> {
    parts: [Option<Part<'w>>; MAX_JOINT],
    rows: usize,
    /// Input values, output values and chunks over all parts.
    x_len: usize,
    y_len: usize,
    chunks: usize,
}

impl<'w> Job<'w> {
    /// The layout of `entries` in the shared buffers.
    fn of(entries: &[Entry<'_, 'w>]) -> Job<'w> {
        let rows = entries.first().map_or(1, |e| e.xs.nrows());
        let mut job = Job {
            parts: [None; MAX_JOINT],
            rows,
            x_len: 0,
            y_len: 0,
            chunks: 0,
        };
        for (slot, e) in job.parts.iter_mut().zip(entries) {
            let (out, inp) = e.w.dim();
            let chunk_rows = rows_per_chunk(e.w);
            *slot = Some(Part {
                w: e.w,
                out,
                inp,
                x_at: job.x_len,
                y_at: job.y_len,
                first_chunk: job.chunks,
                chunk_rows,
            });
            job.x_len += rows * inp;
            job.y_len += out * rows;
            job.chunks += out.div_ceil(chunk_rows);
        }
        job
    }

    /// The part chunk `c` belongs to (its index), and the chunk's rows in that part.
    fn locate(&self, c: usize) -> (usize, Part<'w>, Range<usize>) {
        let (i, part) = self
            .parts
            .iter()
            .flatten()
            .enumerate()
            .take_while(|(_, p)| p.first_chunk <= c)
            .last()
            .map(|(i, p)| (i, *p))
            .expect("chunk within the job");
        let rows = part.chunk_rows;
        let c = c - part.first_chunk;
        (i, part, c * rows..((c + 1) * rows).min(part.out))
    }

    /// `out[(r − rows.start) · B + j]` for the rows `rows` of `part`, from the job's inputs
    /// `x` and what the part's storage made of them (`prepared`, this thread's for the part).
    fn compute(
        &self,
        part: &Part<'w>,
        x: &[f32],
        rows: Range<usize>,
        prepared: &mut Prepared,
        out: &mut [f32],
    ) {
        let x = &x[part.x_at..part.x_at + self.rows * part.inp];
        part.w.dot_rows(x, part.inp, rows, prepared, out);
    }

    /// Where `part`'s rows `rows` sit in the shared output.
    fn shared_rows(&self, part: &Part<'w>, rows: &Range<usize>) -> Range<usize> {
        part.y_at + rows.start * self.rows..part.y_at + rows.end * self.rows
    }
}

struct Shared<'w> {
    buffers: &'w Parts,
    /// The current job's epoch (the lead's own count).
    epoch: AtomicU64,
    /// `2e` while job `e` is published, odd while it is written, [`FINISHED`] at the end.
    seq: AtomicU64,
    /// Participants: the lead and the helpers that may join.
    team_size: usize,
    job: Mutex<Option<Job<'w>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The epoch as `next` holds it.
fn low32(e: u64) -> u64 {
    e & u64::from(u32::MAX)
}

fn tag(e: u64, status: u64) -> u64 {
    e << 2 | status
}

impl<'w> Shared<'w> {
    /// `entries` as one job, if they fit the buffers (the lead's and helpers' input copies
    /// are as long as the shared input).
    fn plan(&self, entries: &[Entry<'_, 'w>]) -> Option<Job<'w>> {
        let rows = entries.first().map_or(1, |e| e.xs.nrows());
        if entries.len() > MAX_JOINT
            || rows > self.buffers.sizes.rows
            || entries.iter().any(|e| e.xs.nrows() != rows)
        {
            return None;
        }
        let job = Job::of(entries);
        (job.x_len <= self.buffers.x.len()
            && job.y_len <= self.buffers.y.len()
            && job.chunks <= self.buffers.chunks.len())
        .then_some(job)
    }

    /// `entries` as one job if they fit the buffers, else one at a time: each as a job of
    /// its own where it fits, on the calling thread where it does not.
    fn run(&self, entries: &mut [Entry<'_, 'w>]) {
        if let Some(job) = self.plan(entries) {
            return self.lead(job, entries);
        }
        for entry in entries {
            let one = std::slice::from_mut(entry);
            match self.plan(one) {
                Some(job) => self.lead(job, one),
                None => {
                    let Entry { w, xs, y } = &mut one[0];
                    let yt = ArrayViewMut2::from_shape((w.dim().0, xs.nrows()), y)
                        .expect("[out, rows] values");
                    w.streamed_into(xs.view(), yt, false);
                }
            }
        }
    }

    /// Participant `p`'s share of the `n` chunks: consecutive rows, so that each thread reads
    /// the weights as one stream.
    fn segment(&self, p: usize, n: usize) -> Range<usize> {
        p * n / self.team_size..(p + 1) * n / self.team_size
    }

    /// The next chunk of job `e` (of `n` chunks) for participant `me`: from its own
    /// segment, then from the others'. `None` once every chunk is taken or the job is no
    /// longer `e`.
    fn claim(&self, me: usize, e: u64, n: usize) -> Option<usize> {
        (0..self.team_size).find_map(|i| {
            let p = (me + i) % self.team_size;
            let v = self.buffers.next[p].0.fetch_add(1, Ordering::Relaxed);
            let c = (v & u64::from(u32::MAX)) as usize;
            (v >> 32 == low32(e) && c < self.segment(p, n).end).then_some(c)
        })
    }

    /// The lead's side of `job`, [`Shared::plan`]'s of `entries`: publish, take chunks, sweep.
    fn lead(&self, job: Job<'w>, entries: &mut [Entry<'_, 'w>]) {
        let e = self.epoch.load(Ordering::Relaxed) + 1;
        self.epoch.store(e, Ordering::Relaxed);
        self.seq.store(2 * e - 1, Ordering::Relaxed);
        fence(Ordering::Release);
        *lock(&self.job) = Some(job);
        let inputs = || entries.iter().flat_map(|en| en.xs.iter());
        for (slot, &v) in self.buffers.x.iter().zip(inputs()) {
            slot.store(v.to_bits(), Ordering::Relaxed);
        }
        let n = job.chunks;
        for (p, next) in self.buffers.next[..self.team_size].iter().enumerate() {
            next.0.store(
                low32(e) << 32 | self.segment(p, n).start as u64,
                Ordering::Relaxed,
            );
        }
        self.seq.store(2 * e, Ordering::Release);

        let mut lead = lock(&self.buffers.lead);
        let LeadScratch { x, prepared } = &mut *lead;
        let x = &mut x.as_slice_mut().expect("contiguous")[..job.x_len];
        for (o, &v) in x.iter_mut().zip(inputs()) {
            *o = v;
        }
        prepared.iter_mut().for_each(Prepared::clear);
        let x = &*x;
        let rows = job.rows;
        let mut chunk_of = |c: usize, entries: &mut [Entry<'_, 'w>]| {
            let (i, part, r) = job.locate(c);
            let y = &mut entries[i].y[r.start * rows..r.end * rows];
            job.compute(&part, x, r, &mut prepared[i], y);
        };
        while let Some(c) = self.claim(0, e, n) {
            self.buffers.chunks[c].store(tag(e, TAKEN), Ordering::Relaxed);
            chunk_of(c, entries);
        }
        for (c, status) in self.buffers.chunks[..n].iter().enumerate() {
            loop {
                let now = status.load(Ordering::Acquire);
                if now >> 2 == e {
                    match now & 3 {
                        DONE => {
                            let (i, part, r) = job.locate(c);
                            let shared = &self.buffers.y[job.shared_rows(&part, &r)];
                            let y = &mut entries[i].y[r.start * rows..r.end * rows];
                            for (o, v) in y.iter_mut().zip(shared) {
                                *o = f32::from_bits(v.load(Ordering::Relaxed));
                            }
                            break;
                        }
                        WRITING => std::hint::spin_loop(),
                        _ => break,
                    }
                } else if status
                    .compare_exchange(now, tag(e, TAKEN), Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    // Taken by a helper that has not finished it: computed here instead.
                    chunk_of(c, entries);
                    break;
                }
            }
        }
    }

    /// A helper's loop: wait for a job, copy its input, take chunks until none is left.
    fn help(&self, slot: &Mutex<HelperScratch>, me: usize) {
        let mut scratch = lock(slot);
        let HelperScratch { x, prepared, y } = &mut *scratch;
        let x = x.as_slice_mut().expect("contiguous");
        let mut seen = 0;
        let mut idle = 0u32;
        loop {
            let s = self.seq.load(Ordering::Acquire);
            if s == FINISHED {
                return;
            }
            if s % 2 == 1 || s / 2 == seen {
                idle = idle.saturating_add(1);
                if idle < SPINS_BEFORE_YIELD {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
                continue;
            }
            idle = 0;
            let e = s / 2;
            let Some(job) = *lock(&self.job) else {
                continue;
            };
            for (o, v) in x[..job.x_len].iter_mut().zip(&self.buffers.x) {
                *o = f32::from_bits(v.load(Ordering::Relaxed));
            }
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) != s {
                continue; // The lead moved on while the input was copied.
            }
            seen = e;
            prepared.iter_mut().for_each(Prepared::clear);
            while let Some(c) = self.claim(me, e, job.chunks) {
                let (i, part, r) = job.locate(c);
                let done = &mut y[..r.len() * job.rows];
                job.compute(&part, x, r.clone(), &mut prepared[i], done);
                let status = &self.buffers.chunks[c];
                let now = status.load(Ordering::Relaxed);
                if now >> 2 >= e
                    || status
                        .compare_exchange(
                            now,
                            tag(e, WRITING),
                            Ordering::Acquire,
                            Ordering::Relaxed,
                        )
                        .is_err()
                {
                    continue; // The lead computed it.
                }
                let shared = &self.buffers.y[job.shared_rows(&part, &r)];
                for (slot, &v) in shared.iter().zip(done.iter()) {
                    slot.store(v.to_bits(), Ordering::Relaxed);
                }
                status.store(tag(e, DONE), Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};
    use ndarray::Array2;

    /// The faster way wins, the other is probed after [`PROBE_EVERY`] runs and then at
    /// doubling gaps while it stays slower, and a change of speed reverses the choice and
    /// brings the probes back to every [`PROBE_EVERY`] runs.
    #[test]
    fn timing_takes_the_faster_way_and_probes_the_other() {
        let mut timing = Timing::default();
        let run = |timing: &mut Timing, with_ms: u64, without_ms: u64| {
            let with = timing.choose();
            let ms = if with { with_ms } else { without_ms };
            timing.record(with, Duration::from_millis(ms));
            with
        };
        let first: Vec<bool> = (0..FIRST_RUNS).map(|_| run(&mut timing, 10, 15)).collect();
        assert_eq!(first, [true, false, true, false]);
        let probes: Vec<u64> = (FIRST_RUNS + 1..=2048)
            .filter(|_| !run(&mut timing, 10, 15))
            .collect();
        // PROBE_EVERY runs after the choice, then gaps of 128, 256, 512, 512, ...
        assert_eq!(probes, [68, 196, 452, 964, 1476, 1988]);
        // Helpers become slow (a busy core): within a few runs the lead goes alone.
        let later: Vec<bool> = (0..8).map(|_| run(&mut timing, 30, 15)).collect();
        assert!(!later[4..].iter().any(|&w| w), "{later:?}");
        // The first probe of helpers comes PROBE_EVERY runs after the change, the next one
        // twice as far.
        let changed = 2048 + later.iter().rposition(|&w| w).unwrap() as u64 + 1;
        let probes: Vec<u64> = (timing.runs + 1..=changed + 3 * PROBE_EVERY)
            .filter(|_| run(&mut timing, 30, 15))
            .collect();
        assert_eq!(probes, [changed + PROBE_EVERY, changed + 3 * PROBE_EVERY]);
    }

    fn weight(out: usize, inp: usize, seed: usize) -> Array2<f32> {
        Array2::from_shape_fn((out, inp), |(i, j)| {
            ((i * 7 + j * 3 + seed) % 23) as f32 / 11.0 - 1.0
        })
    }

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    /// A layer of each weight type for each `(out, in)` shape.
    fn every_type(shapes: &[(usize, usize)]) -> Vec<Linear> {
        shapes
            .iter()
            .enumerate()
            .flat_map(|(s, &(out, inp))| {
                let w = weight(out, inp, s);
                [
                    Linear::from(w.clone()),
                    Linear::from(w.mapv(f16::from_f32)),
                    Linear::from(w.mapv(bf16::from_f32)),
                ]
            })
            .collect()
    }

    /// Many products of every weight type, width and row count, each compared with the serial
    /// kernel: the same per-row dot products, so the results are bit-identical whoever
    /// computed each chunk. More threads than cores make helpers lose their core in the middle
    /// of chunks, which exercises the lead's sweep.
    #[test]
    fn team_products_equal_serial_products() {
        let layers = every_type(&[
            (1, 5),
            (15, 16),
            (16, 33),
            (17, 64),
            (100, 48),
            (768, 96),
            (2048, 64),
        ]);
        for threads in [2, 4, 8] {
            let pool = pool(threads);
            pool.install(|| {
                let mut buffers = TeamBuffers::new(96, 768, MAX_ROWS);
                assert_eq!(buffers.parts.helpers.len(), threads - 1);
                for rows in [1, 2, 8, 9, MAX_ROWS] {
                    let cases: Vec<(Array2<f32>, Array2<f32>)> = (0..40)
                        .map(|i| {
                            let w = &layers[i % layers.len()];
                            let (out, inp) = w.dim();
                            let xs = weight(rows, inp, i + 100);
                            let mut want = Array2::zeros((out, rows));
                            Team::serial().product(w, xs.view(), want.view_mut());
                            (xs, want)
                        })
                        .collect();
                    let got: Vec<Array2<f32>> =
                        with_team_on(Some(&pool), &mut buffers, false, |team| {
                            cases
                                .iter()
                                .enumerate()
                                .map(|(i, (xs, want))| {
                                    let mut y = Array2::from_elem(want.dim(), f32::NAN);
                                    team.product(
                                        &layers[i % layers.len()],
                                        xs.view(),
                                        y.view_mut(),
                                    );
                                    y
                                })
                                .collect()
                        });
                    for (i, ((_, want), y)) in cases.iter().zip(&got).enumerate() {
                        assert_eq!(y, want, "threads {threads}, rows {rows}, product {i}");
                    }
                }
            });
        }
    }

    /// A weight, an input and the serial product.
    type Case<'w> = (&'w Linear, Array1<f32>, Array1<f32>);

    /// Groups of products published as one job give, product by product, the serial bits:
    /// groups of every size up to [`MAX_JOINT`] and beyond it, of mixed weight types and
    /// shapes, and groups too large for the buffers (run one product at a time).
    #[test]
    fn joint_products_equal_serial_products() {
        let layers = every_type(&[(768, 96), (5, 64), (100, 48), (33, 7), (512, 64), (16, 32)]);
        let groups = [1, 2, 3, MAX_JOINT, MAX_JOINT + 1];
        let rounds = 40;
        let cases: Vec<Vec<Case>> = (0..rounds)
            .flat_map(|round| groups.iter().map(move |&n| (round, n)))
            .map(|(round, n)| {
                (0..n)
                    .map(|i| {
                        let w = &layers[(round + 2 * i + n) % layers.len()];
                        let x = weight(1, w.dim().1, round + i).row(0).to_owned();
                        let mut y = Array1::zeros(w.dim().0);
                        Team::serial().matvec_into(w, x.view(), y.view_mut());
                        (w, x, y)
                    })
                    .collect()
            })
            .collect();
        for threads in [2, 3, 8] {
            let pool = pool(threads);
            pool.install(|| {
                // Room for two or three of the products at once: larger groups fall back.
                let mut buffers = TeamBuffers::new(200, 1400, 1);
                // A fresh buffer's first run takes helpers.
                let got: Vec<Vec<Array1<f32>>> =
                    with_team_on(Some(&pool), &mut buffers, false, |team| {
                        cases.iter().map(|case| joint(team, case)).collect()
                    });
                for (c, (case, got)) in cases.iter().zip(&got).enumerate() {
                    for (k, ((_, _, want), y)) in case.iter().zip(got).enumerate() {
                        assert_eq!(y, want, "threads {threads}, case {c}, product {k}");
                    }
                }
            });
        }
    }

    /// `case`'s products through [`Team::matvecs_into`], as groups of 1, 2, 3, [`MAX_JOINT`]
    /// or more.
    fn joint<'w>(team: &Team<'_, 'w>, case: &[Case<'w>]) -> Vec<Array1<f32>> {
        let mut ys: Vec<Array1<f32>> = case
            .iter()
            .map(|(_, _, want)| Array1::from_elem(want.len(), f32::NAN))
            .collect();
        let mut args = case
            .iter()
            .zip(ys.iter_mut())
            .map(|((w, x, _), y)| (*w, x.view(), y.view_mut()));
        let mut next = || args.next().expect("enough products");
        match case.len() {
            1 => team.matvecs_into([next()]),
            2 => team.matvecs_into([next(), next()]),
            3 => team.matvecs_into([next(), next(), next()]),
            MAX_JOINT => team.matvecs_into::<MAX_JOINT>(std::array::from_fn(|_| next())),
            9 => team.matvecs_into::<9>(std::array::from_fn(|_| next())),
            n => unreachable!("no group of {n}"),
        }
        ys
    }

    /// Products larger than the buffers, and weights built from another layout, give the
    /// serial kernel's results inside a team run.
    #[test]
    fn products_the_buffers_do_not_fit_run_serially() {
        let pool = pool(2);
        pool.install(|| {
            let mut buffers = TeamBuffers::new(8, 8, 1);
            let big = Linear::from(weight(40, 20, 1));
            let transposed = Linear::from(weight(20, 40, 2).reversed_axes());
            for w in [&big, &transposed] {
                let xs = weight(1, 20, 3);
                let mut want = Array2::zeros((40, 1));
                Team::serial().product(w, xs.view(), want.view_mut());
                let y = with_team_on(Some(&pool), &mut buffers, false, |team| {
                    let mut y = Array2::zeros((40, 1));
                    team.product(w, xs.view(), y.view_mut());
                    y
                });
                assert_eq!(y, want);
            }
        });
    }

    /// A panic in the lead reaches the caller; the helpers stop.
    #[test]
    fn a_panicking_lead_releases_the_helpers() {
        let pool = pool(3);
        let mut buffers = TeamBuffers::new(8, 8, 1);
        let caught = pool.install(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                with_team_on(Some(&pool), &mut buffers, false, |_| panic!("lead fails"))
            }))
        });
        assert!(caught.is_err());
    }
}

"""Fine-tune ColBERT checkpoint n into n+1 with PairDistill's loss, in our own loop.

colbert-ai's trainer always wraps DDP and has no place for a pairwise term, so this loop drives
its ``ColBERT`` model class directly (query/doc encoders, MaxSim scoring) and saves a checkpoint
that stock colbert-ai indexes and searches.

The loop reaches the student only through its kind's interface (:class:`ColBERTKind`: load,
tokenize, encode, score, save), so a DPR student (:class:`pairdistill.students.dpr.DPRKind`, one
vector per text, score = scaled inner product) trains in the same loop with the same losses; the
kind is read from the input checkpoint.

One training group per query: ``nway`` passages from the pointwise-reranked list (the labelled
positive first when labels are used; then the passages of the sampled pairs; then the best
teacher-ranked rest), the pointwise teacher's scores for them, and the sampled pairs whose two
passages are both in the group with the pairwise teacher's P(d_i > d_j).

Queries without a labelled positive are skipped when labels are used, unless
``unlabelled_queries`` keeps them (``positive_index = -1``: they get the KD and pairwise terms
but no contrastive term), as with MS MARCO's ~800K distillation queries of which ~500K are labelled.

The contrastive term L_CL (``contrastive_negatives``) puts a labelled query's positive against
``teacher``: its own teacher-ranked non-positives (the rest of its group); ``in_batch``: the
passages of the batch's other queries only; ``mined``: its own mined negatives (a file, e.g. the
DRAGON negatives the authors used), encoded beside the group. ``in_batch_negatives`` adds the
other queries' passages to ``teacher`` and ``mined``.

Precision: the encoders run under accelerate's mixed precision (``fp32``, ``bf16``, ``fp16`` with
loss scaling; ``auto`` is bf16 on a GPU that has it, else fp32); MaxSim sums and every loss are
computed in fp32 whatever dtype the encoders hand over.

Micro-batches (gradient cache): with ``micro_batch`` < the batch, a step first embeds the whole
batch in micro-batches without graphs, computes the loss and its gradient with respect to the
embeddings, then encodes each micro-batch again with the graph and back-propagates its slice of
those gradients. The parameter gradients are the full batch's (in-batch negatives included), at
the memory of one micro-batch and the cost of a second forward pass. Each micro-batch's second
pass replays the RNG state of its first, so dropout draws the same masks in both.

Several processes (one per GPU, launched by the job): each takes ``batch_size / world`` queries
of every step from its own share of the queries (a hash of the query id, so no two processes read
the same rows), embeds them, gathers every process's embeddings (its own keep their graph), and
computes the whole batch's loss; the parameter gradients are summed across processes, so a step
equals one process's step on the same batch.

Preemption: with a ``state_dir`` the loop writes a resumable state every ``save_every`` optimizer
steps (model, AdamW, LR scheduler, loss scaler, every RNG and data position of every process, the
loss rows so far), each atomically, and a rerun with the same inputs and hyperparameters continues
from it bit-exactly (on CPU); the state directory is removed once the checkpoint and loss curve are
written.

The package, by concern: :mod:`.batches` (groups, columnar, a step's batch, where its passages sit,
the data position), :mod:`.passages` (the groups' passage texts as Arrow strings), :mod:`.parallel`
(the exchange between processes), :mod:`.state` (the resumable state)
and :mod:`.loop` (the student kinds' interface, a step's loss and gradients, precision, and
:func:`train` itself).
"""

from .batches import Batch, Group, Groups, ParquetColumns, build_groups, in_batch_positive, make_batch
from .loop import (COLBERT, CONTRASTIVE_NEGATIVES, PRECISIONS, ColBERTKind, batch_gradients, resolve_precision,
                   step_loss, student_kind, train)
from .parallel import launch_rank
from .passages import PassageTexts, read_passages
from .state import STATE_FORMAT, load_state, remove_state_dir, run_fingerprint, save_state

__all__ = ["Batch", "Group", "Groups", "ParquetColumns", "build_groups", "in_batch_positive", "make_batch", "COLBERT",
           "CONTRASTIVE_NEGATIVES", "PRECISIONS", "ColBERTKind", "batch_gradients", "resolve_precision", "step_loss",
           "student_kind", "train",
           "launch_rank", "PassageTexts", "read_passages", "STATE_FORMAT", "load_state", "remove_state_dir",
           "run_fingerprint", "save_state"]

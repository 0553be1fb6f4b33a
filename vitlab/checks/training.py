"""Stage 6 — training: train_one_epoch and evaluate, run on the grader's own tiny model.

The grader's model records, on every forward, whether it was in train mode and whether autograd
was on; its optimizer records the parameters and gradients it sees at every step. The judge loads
those arrays into its own copy of the model and recomputes every gradient, loss and accuracy on the
tiny generated dataset itself.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vitlab.checks.base import Stage
from vitlab.checks.judging import CheckList, Fail, array, close, need, number
from vitlab.checks.probing import Probe, one_thread, tensor, to_array

_is_grad_enabled = torch.is_grad_enabled
_relu = torch.relu
_Tensor = torch.Tensor
_no_grad = torch.no_grad
_cross_entropy = nn.functional.cross_entropy

FEATURES, HIDDEN, CLASSES = 6, 8, 3
TRAIN_SIZE, EVAL_SIZE, BATCH = 37, 29, 8  # both end with a partial batch of 5
LR = 0.5
NAMES = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
SHAPES = {"fc1.weight": (HIDDEN, FEATURES), "fc1.bias": (HIDDEN,),
          "fc2.weight": (CLASSES, HIDDEN), "fc2.bias": (CLASSES,)}


class GraderNet(nn.Module):
    """The grader's tiny classifier (6 -> 8 -> 3). `calls` holds [training, grad enabled] for
    every forward."""

    def __init__(self, parameters: dict[str, np.ndarray]):
        super().__init__()
        self.fc1 = nn.Linear(FEATURES, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, CLASSES)
        with _no_grad():
            for name, value in self.named_parameters():
                value.copy_(tensor(parameters[name]))
        self.calls: list[list[bool]] = []

    def forward(self, x):
        self.calls.append([self.training, _is_grad_enabled()])
        return self.fc2(_relu(self.fc1(x)))


class RecordingSGD:
    """Plain SGD (p -= lr * grad) that keeps, for every step, the parameters and gradients it was
    given. It offers what a training loop uses of a torch optimizer (zero_grad, step,
    param_groups) without subclassing one: torch.optim's first use imports torch._dynamo, seconds
    a checkpoint should not spend."""

    def __init__(self, model: nn.Module, lr: float):
        self.named = list(model.named_parameters())
        self.param_groups = [{"params": [p for _, p in self.named], "lr": lr}]
        self.steps: list[dict] = []

    def zero_grad(self, set_to_none: bool = True) -> None:
        for _, p in self.named:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def step(self, closure=None):
        loss = None if closure is None else closure()
        self.steps.append({
            "params": {name: to_array(p, name) for name, p in self.named},
            "grads": {name: None if p.grad is None else to_array(p.grad, name) for name, p in self.named},
        })
        lr = self.param_groups[0]["lr"]
        with _no_grad():
            for _, p in self.named:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-lr)
        return loss


def make_inputs(seed: int) -> dict:
    rng = np.random.default_rng([seed, 6])
    true_weights = rng.standard_normal((FEATURES, CLASSES))

    def dataset(size):
        x = rng.standard_normal((size, FEATURES)).astype(np.float32)
        return x, np.argmax(x @ true_weights, axis=1).astype(np.int64)

    def parameters(scale):
        return {name: (scale * rng.standard_normal(SHAPES[name])).astype(np.float32) for name in NAMES}

    train_x, train_y = dataset(TRAIN_SIZE)
    eval_x, eval_y = dataset(EVAL_SIZE)
    return {"seed": seed, "train_x": train_x, "train_y": train_y, "eval_x": eval_x,
            "eval_y": eval_y, "initial": parameters(0.5), "eval_params": parameters(1.0)}


def loader(x: np.ndarray, y: np.ndarray) -> DataLoader:
    return DataLoader(TensorDataset(tensor(x), torch.from_numpy(np.array(y, dtype=np.int64))),
                      batch_size=BATCH, shuffle=False)


def returned_number(value) -> float | None:
    """A float the student's function returned (a Python number or a 0-d tensor), else None."""
    if isinstance(value, _Tensor) and value.numel() == 1:
        return float(value.detach().reshape(()).item())
    if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
        return float(value)
    return None


# --- probe ---------------------------------------------------------------------------------

def probe(symbols, inputs):
    train_one_epoch, evaluate = symbols["train_one_epoch"], symbols["evaluate"]
    p = Probe()
    device = torch.device("cpu")

    def train():
        model = GraderNet(inputs["initial"]).eval()  # train_one_epoch must switch it to train
        optimizer = RecordingSGD(model, lr=LR)
        returned = train_one_epoch(model, loader(inputs["train_x"], inputs["train_y"]), optimizer,
                                   nn.CrossEntropyLoss(), device)
        return {"returned": returned_number(returned), "returned_type": type(returned).__name__,
                "modes": model.calls, "steps": optimizer.steps,
                "final": {name: to_array(q, name) for name, q in model.named_parameters()}}

    def run_evaluate():
        model = GraderNet(inputs["eval_params"]).train()  # evaluate must switch it to eval
        returned = evaluate(model, loader(inputs["eval_x"], inputs["eval_y"]),
                            nn.CrossEntropyLoss(), device)
        pair = returned if isinstance(returned, (tuple, list)) and len(returned) == 2 else None
        return {"returned": None if pair is None else [returned_number(v) for v in pair],
                "returned_type": type(returned).__name__, "modes": model.calls,
                "params": {name: to_array(q, name) for name, q in model.named_parameters()},
                "with_grad": [name for name, q in model.named_parameters() if q.grad is not None]}

    p.run("train", train)
    p.run("evaluate", run_evaluate)
    return p.data


# --- judge ---------------------------------------------------------------------------------

checks = CheckList()


def judge_model(parameters) -> GraderNet:
    """The judge's own copy of the grader's model, loaded with checked arrays."""
    if not isinstance(parameters, dict):
        raise Fail("parameters that are not a name -> array mapping", "")
    return GraderNet({name: array(parameters.get(name), SHAPES[name], name) for name in NAMES})


def batches(x, y):
    return [(tensor(x[i:i + BATCH]), torch.from_numpy(np.asarray(y[i:i + BATCH], dtype=np.int64)))
            for i in range(0, len(x), BATCH)]


def loss_of(parameters, x, y) -> float:
    with _no_grad():
        return float(_cross_entropy(judge_model(parameters)(tensor(x)), torch.from_numpy(np.asarray(y))))


def batch_gradient(parameters, x, y) -> dict[str, np.ndarray]:
    model = judge_model(parameters)
    _cross_entropy(model(x), y).backward()
    return {name: q.grad.numpy().astype(np.float64) for name, q in model.named_parameters()}


def train_steps(data) -> list[dict]:
    steps = need(data, "train")["steps"]
    if not steps:
        raise Fail("optimizer.step() was never called", "call optimizer.step() after loss.backward()")
    return steps


def forward_modes(data, key: str) -> list:
    """[training, grad enabled] of every forward pass the grader's model saw."""
    modes = need(data, key)["modes"]
    if not modes:
        raise Fail("no forward pass at all", "call model(images) for every batch")
    return modes


@checks.add("train_one_epoch lowers the loss", 2,
            "a lower loss on the training set after one epoch than before")
def lowers_loss(inputs, data, warn):
    before = loss_of(inputs["initial"], inputs["train_x"], inputs["train_y"])
    after = loss_of(need(data, "train")["final"], inputs["train_x"], inputs["train_y"])
    if not after < before - 1e-3:
        raise Fail(f"a loss of {after:.4f} after the epoch, {before:.4f} before",
                   "for every batch: optimizer.zero_grad(), forward, loss, loss.backward(), "
                   "optimizer.step() — in that order")


@checks.add("gradients are zeroed before every step (no accumulation)", 2,
            "at every optimizer.step() the gradient of the current batch's loss only")
def fresh_gradients(inputs, data, warn):
    accumulated = None
    for t, ((x, y), step) in enumerate(zip(batches(inputs["train_x"], inputs["train_y"]), train_steps(data))):
        expected = batch_gradient(step["params"], x, y)
        accumulated = expected if accumulated is None else {
            name: accumulated[name] + expected[name] for name in NAMES}
        grads = step["grads"]
        if any(grads.get(name) is None for name in NAMES):
            raise Fail(f"no gradient at step {t}", "call loss.backward() before optimizer.step()")
        got = {name: array(grads[name], SHAPES[name], name) for name in NAMES}
        if all(close(got[name], expected[name]) for name in NAMES):
            continue
        if t > 0 and all(close(got[name], accumulated[name]) for name in NAMES):
            raise Fail(f"at step {t} the sum of the gradients of batches 0..{t}",
                       "gradients accumulate across steps: call optimizer.zero_grad() in every "
                       "iteration, before loss.backward()")
        raise Fail(f"at step {t} a gradient that is not the one of batch {t}'s loss",
                   "compute the loss of the current batch with the criterion, then backward()")


@checks.add("one optimizer step per batch", 1, f"{-(-TRAIN_SIZE // BATCH)} steps for {-(-TRAIN_SIZE // BATCH)} batches")
def one_step_per_batch(inputs, data, warn):
    count, expected = len(train_steps(data)), -(-TRAIN_SIZE // BATCH)
    if count != expected:
        raise Fail(f"{count} steps", "loop over every batch of the loader and step once per batch")


@checks.add("train_one_epoch puts the model in train mode", 1,
            "model.training == True at every forward during train_one_epoch")
def train_mode(inputs, data, warn):
    if not all(training is True for training, _ in forward_modes(data, "train")):
        raise Fail("forward passes in eval mode",
                   "call model.train() at the start of train_one_epoch (evaluate leaves the model "
                   "in eval mode)")


@checks.add("train_one_epoch returns the mean loss", 1,
            "the mean of the batch losses (per batch or per sample), as a float")
def returns_mean_loss(inputs, data, warn):
    result = need(data, "train")
    if result["returned"] is None:
        raise Fail(f"a {result['returned_type']}", "return the epoch's mean loss as a float")
    if result["returned_type"] not in ("float", "int"):
        warn(f"training: train_one_epoch returns a {result['returned_type']}: return a Python "
             "float (loss.item())")
    got = number(result["returned"], "the returned loss")
    pairs = list(zip(batches(inputs["train_x"], inputs["train_y"]), train_steps(data)))
    losses = [loss_of(step["params"], x.numpy(), y.numpy()) for (x, y), step in pairs]
    sizes = [len(y) for (_, y), _ in pairs]
    per_batch, per_sample = np.mean(losses), np.average(losses, weights=sizes)
    if close(got, per_batch, rtol=1e-3) or close(got, per_sample, rtol=1e-3):
        return
    hint = "add up loss.item() over the epoch and divide by the number of batches (or samples)"
    if close(got, losses[-1], rtol=1e-3):
        hint = f"you return the last batch's loss: {hint}"
    raise Fail(f"{got:.4f} (the mean is {per_sample:.4f} per sample, {per_batch:.4f} per batch)", hint)


@checks.add("evaluate: eval mode, no gradients", 1,
            "model.training == False and torch.is_grad_enabled() == False at every forward")
def eval_modes(inputs, data, warn):
    modes = forward_modes(data, "evaluate")
    problems = []
    if any(training is not False for training, _ in modes):
        problems.append(("forward passes in train mode", "call model.eval() at the start of evaluate"))
    if any(grad is not False for _, grad in modes):
        problems.append(("forward passes that build a graph",
                         "wrap the loop in torch.no_grad(): evaluation needs no gradients"))
    if problems:
        raise Fail(" and ".join(p[0] for p in problems), "; ".join(p[1] for p in problems))


@checks.add("evaluate changes no parameter and calls no backward", 1,
            "the same parameters after evaluate, and no .grad set")
def eval_changes_nothing(inputs, data, warn):
    result = need(data, "evaluate")
    if result["with_grad"]:
        raise Fail(f"gradients on {', '.join(map(str, result['with_grad']))}",
                   "evaluate must not call loss.backward() (nor optimizer.step())")
    for name in NAMES:
        got = array(result["params"].get(name), SHAPES[name], name)
        if not close(got, inputs["eval_params"][name], rtol=0, atol=0):
            raise Fail(f"{name} changed", "evaluate only measures: no optimizer step, no in-place edits")


@checks.add("evaluate returns (accuracy over every sample, mean loss)", 1,
            "(correct / number of samples in the loader, the mean loss)")
def eval_results(inputs, data, warn):
    result = need(data, "evaluate")
    if result["returned"] is None or None in result["returned"]:
        raise Fail(f"a {result['returned_type']}", "return (accuracy, loss), two numbers")
    accuracy, loss = (number(v, "the returned value") for v in result["returned"])
    model = judge_model(inputs["eval_params"])
    with _no_grad():
        per_batch = [(model(x), y) for x, y in batches(inputs["eval_x"], inputs["eval_y"])]
    correct = [int((logits.argmax(dim=1) == y).sum()) for logits, y in per_batch]
    sizes = [len(y) for _, y in per_batch]
    losses = [float(_cross_entropy(logits, y)) for logits, y in per_batch]
    expected = sum(correct) / EVAL_SIZE
    expected_losses = (np.mean(losses), np.average(losses, weights=sizes))
    if close(accuracy, expected) and any(close(loss, v, rtol=1e-3) for v in expected_losses):
        return
    got = f"({accuracy:.4g}, {loss:.4g})"
    if close(loss, expected) and any(close(accuracy, v, rtol=1e-3) for v in expected_losses):
        raise Fail(got, "return (accuracy, loss) in this order")
    if not close(accuracy, expected):
        raise Fail(f"{got}: accuracy {accuracy:.4g} instead of {expected:.4g}",
                   accuracy_hint(accuracy, correct, sizes))
    raise Fail(f"{got}: loss {loss:.4g} instead of {expected_losses[1]:.4g}",
               "average the criterion's loss over every batch (per batch or per sample)")


def accuracy_hint(accuracy: float, correct: list[int], sizes: list[int]) -> str:
    total = sum(correct) / sum(sizes)
    if close(accuracy, correct[0] / sizes[0]):
        return "only the first batch is counted: is the return inside the for loop?"
    if close(accuracy, sum(correct) / len(sizes)):
        return "divide the number of correct samples by the number of samples, not of batches"
    if close(accuracy, np.mean([c / s for c, s in zip(correct, sizes)])):
        return ("averaging per-batch accuracies over-weights the last, smaller batch: count the "
                "correct samples over the whole loader and divide by the number of samples")
    if close(accuracy, 100 * total):
        return "accuracy is a fraction from 0 to 1, not a percentage"
    return "accuracy = (logits.argmax(dim=1) == targets).sum() over every batch / number of samples"


STAGE = Stage(
    name="training",
    title="Stage 6 — training",
    symbols=("train_one_epoch", "evaluate"),
    max_points=checks.max_points,
    make_inputs=make_inputs,
    probe=one_thread(probe),
    judge=one_thread(checks.judge),
    time_limit_s=30.0,
)

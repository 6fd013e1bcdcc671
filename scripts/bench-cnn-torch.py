"""PyTorch on the CPU running the networks of `lambdaml bench cnn`: one training step
(forward, backward, SGD with momentum and weight decay) at a batch size and thread count.

    python3 scripts/bench-cnn-torch.py --model resnet20 --batch 32 --threads 1 --steps 10

The networks are the same graphs as src/algo/cnn/nets.rs (3x3 convolutions without bias,
BatchNorm, projection shortcuts; MobileNet v1 with a stride-1 stem), so parameter counts
match: ResNet-20 272,474, MobileNet 3,217,226, ResNet-18 11,173,962.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv(i, o, k, s=1, groups=1):
    return nn.Conv2d(i, o, k, stride=s, padding=k // 2, groups=groups, bias=False)


class Block(nn.Module):
    def __init__(self, i, o, s):
        super().__init__()
        self.c1, self.n1 = conv(i, o, 3, s), nn.BatchNorm2d(o)
        self.c2, self.n2 = conv(o, o, 3), nn.BatchNorm2d(o)
        self.short = None
        if s != 1 or i != o:
            self.short = nn.Sequential(conv(i, o, 1, s), nn.BatchNorm2d(o))

    def forward(self, x):
        y = F.relu(self.n1(self.c1(x)))
        y = self.n2(self.c2(y))
        return F.relu(y + (self.short(x) if self.short is not None else x))


class ResNet(nn.Module):
    def __init__(self, stem, stages, width=1.0, classes=10):
        super().__init__()
        w = lambda c: max(1, round(c * width))
        self.stem, self.norm = conv(3, w(stem), 3), nn.BatchNorm2d(w(stem))
        blocks, i = [], w(stem)
        for c, n, s in stages:
            for b in range(n):
                blocks.append(Block(i, w(c), s if b == 0 else 1))
                i = w(c)
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(i, classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.norm(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


class MobileNet(nn.Module):
    CFG = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]

    def __init__(self, width=1.0, classes=10):
        super().__init__()
        w = lambda c: max(1, round(c * width))
        self.stem, self.norm = conv(3, w(32), 3), nn.BatchNorm2d(w(32))
        layers, i = [], w(32)
        for c, s in self.CFG:
            layers += [conv(i, i, 3, s, groups=i), nn.BatchNorm2d(i), nn.ReLU(),
                       conv(i, w(c), 1), nn.BatchNorm2d(w(c)), nn.ReLU()]
            i = w(c)
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(i, classes)

    def forward(self, x):
        x = self.layers(F.relu(self.norm(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


def build(name, width):
    if name == "resnet20":
        return ResNet(16, [(16, 3, 1), (32, 3, 2), (64, 3, 2)], width)
    if name == "resnet18":
        return ResNet(64, [(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)], width)
    if name == "mobilenet":
        return MobileNet(width)
    raise SystemExit(f"unknown model {name}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet20")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    net = build(a.model, a.width)
    params = sum(t.numel() for t in net.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(a.batch, 3, 32, 32)
    y = torch.randint(0, 10, (a.batch,))
    times = []
    for i in range(a.steps + 1):
        t = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        if i > 0:
            times.append(time.perf_counter() - t)
    out = {"model": a.model, "width": a.width, "batch": a.batch, "threads": a.threads,
           "trainable_params": params, "steps": a.steps,
           "step_s_median": statistics.median(times), "step_s_min": min(times)}
    if a.json:
        print(json.dumps(out))
    else:
        print(f"torch {a.model} (width {a.width}, {params} trainable), batch {a.batch}, "
              f"{a.threads} thread(s): {out['step_s_median']*1e3:.1f} ms per step "
              f"(median of {a.steps}, fastest {out['step_s_min']*1e3:.1f} ms)")


if __name__ == "__main__":
    main()

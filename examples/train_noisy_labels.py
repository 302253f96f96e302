"""Train your own model on labels you do not fully trust, with ANL-CE and the published
recipe (SGD with momentum, cosine schedule, weight decay 0, ANL's L1 term, gradient-norm
clipping at 5). Replace `model` and `loader` with yours.

    python examples/train_noisy_labels.py [--epochs 20] [--noise 0.4] [--threads 1]
"""
import argparse

PRESETS = ("mnist", "cifar10", "cifar100", "webvision")  # keys of fused_anl.PRESETS


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=20, help="training epochs")
    p.add_argument("--noise", type=float, default=0.4, help="symmetric noise rate in [0, 1)")
    p.add_argument("--preset", default="cifar10", choices=PRESETS,
                   help="published ANL-CE hyperparameters (alpha, beta, L1 delta)")
    p.add_argument("--lr", type=float, default=1.0, help="SGD learning rate")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch (a small model runs fastest on one)")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error(f"argument --epochs: must be >= 1, got {args.epochs}")
    if not 0.0 <= args.noise < 1.0:
        p.error(f"argument --noise: must lie in [0, 1), got {args.noise}")
    if args.threads < 1:
        p.error(f"argument --threads: must be >= 1, got {args.threads}")

    import torch  # imported after parsing: --help answers at once

    import fused_anl
    from fused_anl.recipes import evaluate, make_optimizer, train_one_epoch

    torch.set_num_threads(args.threads)

    # --- your data and model (here: random features, 10 classes, symmetric noise) ---
    torch.manual_seed(0)
    x = torch.randn(3000, 32)
    clean = (x @ torch.randn(32, 10)).argmax(1)  # a learnable teacher
    noisy, flipped = fused_anl.symmetric_noise(clean, rate=args.noise, num_classes=10, seed=0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, noisy),
                                         batch_size=128, shuffle=True)
    model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10))

    # --- the loss and the recipe: ANL-CE with a published preset (alpha, beta, delta) ---
    loss_fn = fused_anl.get_loss("anl_ce", **fused_anl.PRESETS[args.preset]["anl_ce"])
    print(loss_fn)
    optimizer, scheduler = make_optimizer(model, "anl_ce", lr=args.lr, epochs=args.epochs)
    for epoch in range(args.epochs):
        # adds loss_fn.regularizer(model), the delta * L1 term, before clipping
        loss = train_one_epoch(model, loader, loss_fn, optimizer, scheduler, clip=5.0)
    print(f"final training loss {loss:.4f}; accuracy against the clean labels: "
          f"{evaluate(model, [(x, clean)]):.3f} "
          f"(realized noise {fused_anl.noise.realized_noise_rate(clean, noisy):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

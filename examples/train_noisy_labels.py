"""Train your own model on labels you do not fully trust, with ANL-CE and the published
recipe. Replace `model` and `loader` with yours.

    python examples/train_noisy_labels.py
"""
import torch

import fused_anl
from fused_anl.recipes import evaluate, make_optimizer, train_one_epoch

# --- your data and model (here: random features, 20 classes, 40% symmetric noise) ---
torch.manual_seed(0)
x = torch.randn(2000, 32)
clean = (x @ torch.randn(32, 20)).argmax(1)  # a learnable teacher
noisy, flipped = fused_anl.symmetric_noise(clean, rate=0.4, num_classes=20, seed=0)
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, noisy), batch_size=128,
                                     shuffle=True)
model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Linear(128, 20))

# --- the loss and the recipe: ANL-CE with the CIFAR-10 preset (alpha, beta, L1 delta) ---
loss_fn = fused_anl.get_loss("anl_ce", **fused_anl.PRESETS["cifar10"]["anl_ce"])
epochs = 20
optimizer, scheduler = make_optimizer(model, "anl_ce", lr=1.0, epochs=epochs)  # weight decay 0 for ANL
for epoch in range(epochs):
    loss = train_one_epoch(model, loader, loss_fn, optimizer, l1_delta=loss_fn.l1_delta, clip=5.0)
    scheduler.step()
print(f"final training loss {loss:.4f}; accuracy against the clean labels: "
      f"{evaluate(model, [(x, clean)]):.3f} (realized noise {fused_anl.noise.realized_noise_rate(clean, noisy):.2f})")

"""SiT's stochastic interpolants: x_t = alpha(t) * x1 + sigma(t) * x0, x0 ~ N(0, I) noise, x1 data,
t from 0 (noise) to 1 (data) — SiT's convention (willisma/SiT transport/path.py). The network
predicts the velocity u_t = alpha'(t) x1 + sigma'(t) x0.

Paths: "linear" (alpha = t, sigma = 1 - t) and "gvp" (alpha = sin(pi t / 2), sigma = cos(pi t / 2)).
Samplers over fixed steps: ODE Euler and Heun, and an Euler–Maruyama SDE with SiT's "sigma"
diffusion w(t) = sigma(t) and a deterministic last step ("Mean").

diffusers' FlowMatchEulerDiscreteScheduler runs the linear path backwards (sigma = 1 - t) with
model output noise - data = -u: `tests/test_transport.py` checks our Euler sampler against it.
"""
from __future__ import annotations

import math

import torch
from diffusers.utils.torch_utils import randn_tensor

PATHS = ("linear", "gvp")
SAMPLERS = ("euler", "heun", "sde")


class Interpolant:
    def __init__(self, path_type: str = "linear"):
        if path_type not in PATHS:
            raise ValueError(f"path_type must be one of {PATHS}, got {path_type!r}")
        self.path_type = path_type

    def coefficients(self, t: torch.Tensor):
        """(alpha, sigma, d_alpha, d_sigma) at t, each shaped like t."""
        if self.path_type == "linear":
            return t, 1 - t, torch.ones_like(t), -torch.ones_like(t)
        h = math.pi / 2
        return torch.sin(h * t), torch.cos(h * t), h * torch.cos(h * t), -h * torch.sin(h * t)

    def interpolate(self, x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor):
        """(x_t, u_t) for data x1, noise x0 and per-sample t (B,)."""
        a, s, da, ds = (c.view(-1, *[1] * (x1.ndim - 1)) for c in self.coefficients(t))
        return a * x1 + s * x0, da * x1 + ds * x0

    def noise_estimate(self, x: torch.Tensor, velocity: torch.Tensor, t: float) -> torch.Tensor:
        """E[x0 | x_t] from the velocity: solve x = a x1 + s x0, v = a' x1 + s' x0 for x0.
        The determinant a s' - a' s is -1 (linear) and -pi/2 (gvp): never zero."""
        a, s, da, ds = self.coefficients(torch.tensor(float(t), dtype=torch.float64))
        return (a * velocity - da * x) / float(a * ds - da * s)

    @torch.no_grad()
    def sample(self, velocity_fn, shape, num_steps: int, method: str = "euler", generator=None, device="cpu",
               dtype=torch.float32, progress=None, noise: torch.Tensor | None = None):
        """Integrate from noise at t=0 to data at t=1 with `num_steps` fixed steps.

        velocity_fn(x, t: float) -> velocity. "sde" is Euler–Maruyama for dx = (v + w/2 * score) dt +
        sqrt(w) dW with w(t) = sigma(t), which keeps the ODE's marginals; since score = -E[x0|x]/sigma
        the drift is v - E[x0|x]/2, finite at every t. The last step adds no noise.
        """
        if method not in SAMPLERS:
            raise ValueError(f"sampling method must be one of {SAMPLERS}, got {method!r}")
        if num_steps <= 0:
            raise ValueError(f"num_steps must be > 0, got {num_steps}")
        x = noise if noise is not None else randn_tensor(shape, generator=generator, device=torch.device(device),
                                                         dtype=dtype)
        ts = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64).tolist()
        steps = range(num_steps)
        for i in (progress(steps) if progress else steps):
            t, t_next = ts[i], ts[i + 1]
            dt = t_next - t
            v = velocity_fn(x, t)
            if method == "euler":
                x = x + dt * v
            elif method == "heun":
                x_pred = x + dt * v
                x = x + dt * 0.5 * (v + velocity_fn(x_pred, t_next))
            else:
                # w(t) = sigma(t): drift v + w/2 * score = v - E[x0|x]/2 (score = -E[x0|x]/sigma)
                drift = v - 0.5 * self.noise_estimate(x, v, t)
                x = x + dt * drift
                if i < num_steps - 1:
                    sigma = float(self.coefficients(torch.tensor(t))[1])
                    x = x + math.sqrt(max(sigma, 0.0) * dt) * randn_tensor(x.shape, generator=generator,
                                                                          device=x.device, dtype=x.dtype)
        return x

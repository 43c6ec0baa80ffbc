"""SiT's stochastic interpolants: x_t = alpha(t) * x1 + sigma(t) * x0, x0 ~ N(0, I) noise, x1 data,
t from 0 (noise) to 1 (data) — SiT's convention (willisma/SiT transport/path.py). The network
predicts the velocity u_t = alpha'(t) x1 + sigma'(t) x0.

Paths: "linear" (alpha = t, sigma = 1 - t) and "gvp" (alpha = sin(pi t / 2), sigma = cos(pi t / 2)).
Samplers: ODE Euler and Heun over fixed steps, SiT's adaptive dopri5 ODE (torchdiffeq), and SiT's
Euler–Maruyama SDE with its "sigma" diffusion w(t) = diffusion_norm * sigma(t) and its deterministic
"Mean" last step.

diffusers' FlowMatchEulerDiscreteScheduler runs the linear path backwards (sigma = 1 - t) with
model output noise - data = -u: `tests/test_transport.py` checks our Euler sampler against it.
"""
from __future__ import annotations

import math

import torch
from diffusers.utils.torch_utils import randn_tensor

PATHS = ("linear", "gvp")
SAMPLERS = ("euler", "heun", "sde", "dopri5")


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
               dtype=torch.float32, progress=None, noise: torch.Tensor | None = None, diffusion_norm: float = 1.0,
               last_step_size: float = 0.04, atol: float = 1e-6, rtol: float = 1e-3):
        """Integrate from noise at t=0 to data at t=1.

        velocity_fn(x, t: float) -> velocity.
        - "euler", "heun": `num_steps` fixed ODE steps (Heun evaluates the model twice per step).
        - "dopri5": SiT's adaptive ODE (torchdiffeq's Dormand-Prince with `atol`, `rtol`; SiT's defaults
          1e-6 / 1e-3) reporting on SiT's grid of `num_steps` times over [0, 1]; the solver chooses the
          evaluations.
        - "sde": SiT's Euler-Maruyama for dx = (v + w score) dt + sqrt(2 w) dW with its "sigma" diffusion
          w(t) = diffusion_norm * sigma(t), on num_steps - 1 steps over [0, 1 - last_step_size], then
          its "Mean" last step (the drift alone, size `last_step_size`). score = -E[x0|x] / sigma, so
          the drift is v - diffusion_norm * E[x0|x], finite at every t. This keeps the ODE's marginals
          for any diffusion_norm (0 is the ODE).
        """
        if method not in SAMPLERS:
            raise ValueError(f"sampling method must be one of {SAMPLERS}, got {method!r}")
        if num_steps <= 0 or (method in ("sde", "dopri5") and num_steps < 2):
            raise ValueError(f"num_steps must be > 0 (>= 2 for sde and dopri5), got {num_steps}")
        x = noise if noise is not None else randn_tensor(shape, generator=generator, device=torch.device(device),
                                                         dtype=dtype)
        if method == "dopri5":
            return self._dopri5(velocity_fn, x, num_steps, atol, rtol)
        if method == "sde":
            return self._sde(velocity_fn, x, num_steps, diffusion_norm, last_step_size, generator, progress)
        ts = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64).tolist()
        steps = range(num_steps)
        for i in (progress(steps) if progress else steps):
            t, t_next = ts[i], ts[i + 1]
            dt = t_next - t
            v = velocity_fn(x, t)
            if method == "euler":
                x = x + dt * v
            else:
                x_pred = x + dt * v
                x = x + dt * 0.5 * (v + velocity_fn(x_pred, t_next))
        return x

    @staticmethod
    def _dopri5(velocity_fn, x, num_steps, atol, rtol):
        from torchdiffeq import odeint  # only this method needs it

        grid = torch.linspace(0.0, 1.0, num_steps, device=x.device)  # SiT's output times (fp32, as SiT's)
        return odeint(lambda t, y: velocity_fn(y, float(t)), x, grid, method="dopri5", atol=[atol], rtol=[rtol])[-1]

    def _sde(self, velocity_fn, x, num_steps, norm, last_step_size, generator, progress):
        if not 0 < last_step_size < 1:
            raise ValueError(f"last_step_size must be in (0, 1), got {last_step_size}")
        t1 = 1.0 - last_step_size
        ts = torch.linspace(0.0, t1, num_steps).tolist()  # SiT's grid: float32 times
        dt = ts[1] - ts[0]

        def drift(x, t):
            v = velocity_fn(x, t)
            return v - norm * self.noise_estimate(x, v, t)  # v + w * score with w = norm * sigma

        steps = range(num_steps - 1)
        for i in (progress(steps) if progress else steps):
            t = ts[i]
            w = norm * float(self.coefficients(torch.tensor(t))[1])
            dw = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype) * math.sqrt(dt)
            x = x + drift(x, t) * dt + math.sqrt(2 * max(w, 0.0)) * dw
        return x + drift(x, t1) * last_step_size  # SiT's "Mean" last step: no noise

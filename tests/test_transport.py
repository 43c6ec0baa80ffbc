"""SiT interpolants and samplers against closed forms: the exact velocity of a Gaussian data
distribution carries N(0, 1) noise to N(mu, s^2) under every path and sampler; Euler on the linear
path equals diffusers' FlowMatchEulerDiscreteScheduler after converting time and sign."""
import pytest
import torch

from lcgen.priors.transport import Interpolant

MU, S = 1.5, 0.4


def gaussian_velocity(interp):
    """E[u_t | x_t] for data ~ N(MU, S^2): x_t ~ N(a MU, a^2 S^2 + s^2) and the conditional means
    of x1 and x0 are linear in x_t."""
    def v(x, t):
        a, s, da, ds = (float(c) for c in interp.coefficients(torch.tensor(t, dtype=torch.float64)))
        var = a * a * S * S + s * s
        e1 = MU + a * S * S / var * (x - a * MU)
        e0 = s / var * (x - a * MU)
        return da * e1 + ds * e0
    return v


@pytest.mark.parametrize("path", ["linear", "gvp"])
@pytest.mark.parametrize("method,steps,tol,options", [
    ("euler", 200, 0.03, {}), ("heun", 40, 0.02, {}), ("dopri5", 10, 0.02, {}),
    ("sde", 400, 0.04, {}), ("sde", 400, 0.04, dict(diffusion_norm=0.3, last_step_size=0.01))])
def test_samplers_reach_the_data_distribution(path, method, steps, tol, options):
    interp = Interpolant(path)
    x = interp.sample(gaussian_velocity(interp), (40000,), steps, method, generator=torch.Generator().manual_seed(0),
                      dtype=torch.float64, **options)
    assert abs(x.mean().item() - MU) < tol
    assert abs(x.std().item() - S) < tol


def test_euler_on_point_mass_lands_exactly():
    c = torch.tensor([0.7, -2.0])
    x = Interpolant("linear").sample(lambda x, t: (c - x) / (1 - t), (2,), 7, "euler",
                                     generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(x, c.double())


def test_interpolate_and_noise_estimate_invert_each_other():
    for path in ("linear", "gvp"):
        interp = Interpolant(path)
        x1, x0 = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
        t = 0.3
        xt, u = interp.interpolate(x1, x0, torch.full((5,), t, dtype=torch.float64))
        torch.testing.assert_close(interp.noise_estimate(xt, u, t), x0)
        a, s, _, _ = interp.coefficients(torch.tensor(t))
        if path == "gvp":
            assert abs(float(a) ** 2 + float(s) ** 2 - 1) < 1e-6  # variance preserving


def test_euler_matches_diffusers_flow_match_euler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    def v_sit(x, t):  # any smooth field
        return torch.sin(3 * x) * (1 + t) - 0.5 * x

    steps = 10
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    ours = Interpolant("linear").sample(v_sit, noise.shape, steps, "euler", noise=noise.clone())
    sched = FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(sigmas=[1 - i / steps for i in range(steps)])
    x = noise.clone()
    for t in sched.timesteps:
        sigma = float(t) / 1000
        x = sched.step(-v_sit(x, 1 - sigma), t, x).prev_sample  # diffusers: sigma = 1 - t_sit, output = -u
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="path_type"):
        Interpolant("vp-cosine")
    with pytest.raises(ValueError, match="sampling method"):
        Interpolant().sample(lambda x, t: x, (2,), 4, "rk4")
    with pytest.raises(ValueError, match="num_steps"):
        Interpolant().sample(lambda x, t: x, (2,), 0)
    with pytest.raises(ValueError, match=">= 2 for sde"):
        Interpolant().sample(lambda x, t: x, (2,), 1, "sde")
    with pytest.raises(ValueError, match="last_step_size"):
        Interpolant().sample(lambda x, t: x, (2,), 4, "sde", last_step_size=1.5)


def test_sde_follows_sits_grid_noise_and_mean_last_step():
    # by hand, with a velocity field whose E[x0|x] is known: 3 points on [0, 0.96], 2 noisy steps, one mean step
    interp, norm, lss = Interpolant("linear"), 0.7, 0.04
    field = lambda x, t: 0.5 * x + t  # noqa: E731 - any smooth field
    x0 = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    got = interp.sample(field, (6,), 3, "sde", generator=g, noise=x0.clone(), dtype=torch.float64,
                        diffusion_norm=norm, last_step_size=lss)
    g = torch.Generator().manual_seed(2)
    x, ts = x0.clone(), torch.linspace(0, 1 - lss, 3).tolist()
    dt = ts[1] - ts[0]

    def drift(x, t):  # linear path: E[x0|x] = t v - x (a = t, s = 1 - t, a s' - a' s = -1)
        v = field(x, t)
        return v - norm * (x - t * v)

    for t in ts[:-1]:
        x = x + drift(x, t) * dt + (2 * norm * (1 - t)) ** 0.5 * torch.randn(6, generator=g, dtype=torch.float64) * dt ** 0.5
    torch.testing.assert_close(got, x + drift(x, 1 - lss) * lss)


def test_dopri5_solves_a_linear_ode_to_tolerance():
    # dx/dt = -2 x: x(1) = x(0) e^-2
    x = Interpolant("linear").sample(lambda x, t: -2 * x, (5,), 4, "dopri5", noise=torch.ones(5, dtype=torch.float64),
                                     atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(x, torch.full((5,), torch.e ** -2, dtype=torch.float64), atol=1e-7, rtol=1e-7)

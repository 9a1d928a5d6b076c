"""The schedulers of the S2S2 diffusion generator: DDPM for training (1000 steps, ``squaredcos_cap_v2``, epsilon
prediction), DDIM with the same betas and ``trailing`` timesteps for sampling."""
from __future__ import annotations


def train_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                         prediction_type="epsilon")



def sampling_scheduler(train, steps: int):
    """A ``DDIMScheduler`` with ``train``'s betas (``trailing`` timesteps, no clipping), set to ``steps`` steps."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(train.config, clip_sample=False, timestep_spacing="trailing")
    sched.set_timesteps(steps)
    return sched

"""The models: plain ``nn.Module``s that take a norm factory and never read a config."""

from normlab.models.lenet import LeNet

__all__ = ["LeNet"]

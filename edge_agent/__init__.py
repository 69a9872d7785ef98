"""The QSAE Fleet edge agent: device daemon, runtime and CLI (no torch, no server stack).

Public API for an application on the device:
    from edge_agent import Agent, BackgroundAgent, load_settings
    with BackgroundAgent(Agent(load_settings())) as agent:
        out = agent.predict(images)          # ids, classes, confidence, probs, version
        agent.feedback(out.ids, labels)      # whenever true labels become known
"""

from edge_agent.agent import Agent, BackgroundAgent
from edge_agent.config import AgentSettings, load_settings

__all__ = ["Agent", "AgentSettings", "BackgroundAgent", "load_settings"]

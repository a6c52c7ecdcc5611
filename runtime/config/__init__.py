"""Configuration files: the site file of ``coordinator run`` / ``coordinator check``, and the asset and
policy models scenario files share with it.

* :mod:`.models`: the pydantic models (strict types, unknown keys refused);
* :mod:`.loader`: TOML -> model, every problem reported at once (:func:`load_site_config`);
* :mod:`.errors`: pydantic's errors as lines naming the key path, the value and what was expected;
* :mod:`.build`: model -> asset specs, device links and the keyword arguments of a Site.

It stands beside :mod:`runtime.site` (neither imports the other): the site process and the scenario
runner, one floor up, use both.
"""

from .loader import load_site_config
from .models import BatteryConfig, ChargerConfig, GridConfig, SiteConfig

__all__ = ["load_site_config", "SiteConfig", "ChargerConfig", "BatteryConfig", "GridConfig"]

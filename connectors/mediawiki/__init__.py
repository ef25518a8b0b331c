"""The ``mediawiki`` connector: pages of a MediaWiki wiki through its Action API."""

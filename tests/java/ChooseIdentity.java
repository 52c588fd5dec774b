// A JSSE client holding two client identities in one key store, as a Java WebDAV client
// (Cyberduck, Sardine-based tools, Android's HttpsURLConnection) does: which one does the
// JDK's own key manager present, given the CA names of the server's CertificateRequest?
// Driven by tests/test_java_client.py; run with the single-file launcher (JDK 11+):
//
//   java ChooseIdentity.java PROTOCOL CA.pem PORT PATH USER PASSWORD ALIAS=FILE.p12:PASS ...
//
// PROTOCOL is TLSv1.2 or TLSv1.3. The key store is built in memory from the .p12 files, in
// the order given, under the aliases given. Prints, one per line:
//   ISSUERS=<the CA names the server sent, "; "-separated, or "null">
//   WITHOUT_NAMES=<the alias the same key manager picks when given no CA names>
//   CHOSEN=<the alias it picks with the server's CA names>
//   STATUS=<the HTTP status of a GET of PATH with Basic USER:PASSWORD, or "error ...">
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.Socket;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import java.security.Principal;
import java.security.PrivateKey;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.security.cert.X509Certificate;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import javax.net.ssl.HttpsURLConnection;
import javax.net.ssl.KeyManager;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLEngine;
import javax.net.ssl.TrustManagerFactory;
import javax.net.ssl.X509ExtendedKeyManager;
import javax.net.ssl.X509KeyManager;

public class ChooseIdentity {
    static final char[] STORE_PASS = "store-pass".toCharArray();

    public static void main(String[] a) throws Exception {
        String protocol = a[0], caPath = a[1], path = a[3], user = a[4], pw = a[5];
        int port = Integer.parseInt(a[2]);
        KeyStore ks = KeyStore.getInstance("PKCS12");
        ks.load(null, null);
        for (int i = 6; i < a.length; i++) {
            String alias = a[i].substring(0, a[i].indexOf('='));
            String rest = a[i].substring(a[i].indexOf('=') + 1);
            String file = rest.substring(0, rest.lastIndexOf(':'));
            char[] pass = rest.substring(rest.lastIndexOf(':') + 1).toCharArray();
            KeyStore one = KeyStore.getInstance("PKCS12");
            try (InputStream in = new FileInputStream(file)) { one.load(in, pass); }
            String inner = one.aliases().nextElement();
            Certificate[] chain = one.getCertificateChain(inner);
            ks.setKeyEntry(alias, one.getKey(inner, pass), STORE_PASS, chain);
        }
        KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        kmf.init(ks, STORE_PASS);
        X509KeyManager base = (X509KeyManager) kmf.getKeyManagers()[0];
        X509ExtendedKeyManager reporting = new X509ExtendedKeyManager() {
            public String chooseClientAlias(String[] kt, Principal[] issuers, Socket s) {
                List<String> names = new ArrayList<>();
                if (issuers != null) for (Principal p : issuers) names.add(p.getName());
                System.out.println("ISSUERS=" + (issuers == null ? "null" : String.join("; ", names)));
                System.out.println("WITHOUT_NAMES=" + base.chooseClientAlias(kt, null, s));
                String pick = base.chooseClientAlias(kt, issuers, s);
                System.out.println("CHOSEN=" + pick);
                return pick;
            }
            public String chooseEngineClientAlias(String[] kt, Principal[] issuers, SSLEngine e) {
                return chooseClientAlias(kt, issuers, null);
            }
            public String[] getClientAliases(String kt, Principal[] i) { return base.getClientAliases(kt, i); }
            public String chooseServerAlias(String kt, Principal[] i, Socket s) { return null; }
            public String[] getServerAliases(String kt, Principal[] i) { return null; }
            public X509Certificate[] getCertificateChain(String alias) { return base.getCertificateChain(alias); }
            public PrivateKey getPrivateKey(String alias) { return base.getPrivateKey(alias); }
        };
        KeyStore ts = KeyStore.getInstance("PKCS12");
        ts.load(null, null);
        try (InputStream in = new FileInputStream(caPath)) {
            ts.setCertificateEntry("ca", CertificateFactory.getInstance("X.509").generateCertificate(in));
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(ts);
        SSLContext ctx = SSLContext.getInstance(protocol);
        ctx.init(new KeyManager[] {reporting}, tmf.getTrustManagers(), null);
        HttpsURLConnection c = (HttpsURLConnection) new URL("https://127.0.0.1:" + port + path).openConnection();
        c.setSSLSocketFactory(ctx.getSocketFactory());
        c.setHostnameVerifier((h, s) -> true);  // the server certificate names localhost; the CA check still runs
        String basic = Base64.getEncoder().encodeToString((user + ":" + pw).getBytes(StandardCharsets.UTF_8));
        c.setRequestProperty("Authorization", "Basic " + basic);
        try {
            System.out.println("STATUS=" + c.getResponseCode());
        } catch (IOException e) {
            System.out.println("STATUS=error " + e);
        }
    }
}
